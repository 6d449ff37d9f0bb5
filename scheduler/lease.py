"""Leadership among scheduler replicas: a Redis key holding the leader's token, with a TTL.

The leader renews the lease on every pass; a replica that stops (or loses Redis) stops
renewing, and another takes over when the TTL runs out. It uses redis-py's ``Lock`` (an
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
    """This replica's claim to lead; ``hold()`` once per pass."""

    def __init__(self, redis_url: str, ttl_s: float):
        self.lock = Lock(q.connect(redis_url), LEASE_KEY, timeout=ttl_s, thread_local=False)
        self.leading = False

    def hold(self) -> bool | None:
        """Take or renew the lease: True while leading, False while another replica leads,
        None when Redis cannot be reached."""
        try:
            if self.leading:
                try:
                    self.lock.reacquire()
                    return True
                except LockError:
                    log.warning("scheduler lease lost (it ran out); another replica may lead")
                    self.leading = False
            self.leading = bool(self.lock.acquire(blocking=False))
            if self.leading:
                log.info("this scheduler leads (lease %s)", LEASE_KEY)
            return self.leading
        except RedisError:
            self.leading = False
            return None

    def release(self) -> None:
        """Give the lease up (on shutdown), so another replica need not wait for the TTL."""
        if self.leading:
            with contextlib.suppress(LockError, RedisError):
                self.lock.release()
            self.leading = False
