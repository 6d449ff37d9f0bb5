"""Leadership among scheduler replicas: a Redis key holding the leader's token, with a TTL.

The leader renews the lease on every pass; a replica that stops (or loses Redis) stops
renewing, and another takes over when the TTL runs out. A replica with a name that outlives
its process (``DICOMSTL_SCHEDULER_REPLICA``: the pod's name, or ``dicomstl up``'s own) holds
the same token after a restart, so a leader killed and restarted in place takes its lease back
at once instead of waiting out the TTL with deletions stopped. It uses redis-py's ``Lock`` (an
atomic SET NX PX, renewed and released by Lua scripts that check the token). The lease only
saves duplicate work: every deletion is idempotent, so when Redis cannot be reached each
replica sweeps on its own rather than letting deadlines pass.
"""

from __future__ import annotations

import contextlib
import logging

from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from dicomstl import queue as q

log = logging.getLogger(__name__)

LEASE_KEY = "dicomstl:scheduler:leader"


class Lease:
    """This replica's claim to lead; ``hold()`` once per pass. ``replica``: its name, kept
    across its restarts and unique among the replicas; None or empty: a new token each start."""

    def __init__(self, redis_url: str, ttl_s: float, replica: str | None = None):
        self.lock = Lock(q.connect(redis_url), LEASE_KEY, timeout=ttl_s, thread_local=False)
        self.token = replica.encode() if replica else None
        self.lock.local.token = self.token
        self.leading = False

    def hold(self) -> bool | None:
        """Take or renew the lease: True while leading, False while another replica leads,
        None when Redis cannot be reached."""
        try:
            if not self.leading and self.token and self.lock.owned():
                log.info("this scheduler leads again (its lease from before a restart)")
                self.leading = True
            if self.leading:
                try:
                    self.lock.reacquire()
                    return True
                except LockError:
                    log.warning("scheduler lease lost (it ran out); another replica may lead")
                    self.leading = False
            self.leading = bool(self.lock.acquire(blocking=False, token=self.token))
            if self.leading:
                log.info("this scheduler leads (lease %s)", LEASE_KEY)
            return self.leading
        except RedisError:
            # leading stays as it was: a Redis that comes back with the lease (persistence)
            # still holds this replica's token, which the next pass renews; one that lost it
            # makes the renewal fail, and the lease is taken anew
            return None

    def release(self) -> None:
        """Give the lease up (on shutdown), so another replica need not wait for the TTL."""
        if self.leading:
            with contextlib.suppress(LockError, RedisError):
                self.lock.release()
            self.leading = False
