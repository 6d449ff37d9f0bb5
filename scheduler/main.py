"""The scheduler's loop: recover lost jobs, delete what is due, export the proof.

Deadlines live in the database (``retention``), so a scheduler that was down catches up on
its next pass. A full pass (due jobs, the scans for orphans, table rows) runs every
``sweep_interval_s``; in between, the scheduler wakes at each job's deadline and deletes the
jobs that are due, so they go within about a second of it. One replica leads (a Redis
lease); the others only compute the gauges until it stops renewing the lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from dicomstl.db import utcnow
from dicomstl.settings import Settings
from scheduler import metrics, recovery, retention
from scheduler.lease import Lease

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
#: The shortest wait between passes (seconds), even when a deadline is already past.
MIN_WAIT_S = 1.0


class Scheduler:
    """One scheduler replica. ``clock`` gives the current UTC time (injectable for tests)."""

    def __init__(self, settings: Settings, clock: Clock = utcnow):
        self.settings = settings
        self.clock = clock
        # a lease outlives two passes, so a live leader never loses it between them
        self.lease = Lease(settings.redis_url, ttl_s=2 * settings.sweep_interval_s + 10,
                           replica=settings.scheduler_replica)
        self.next_full_pass = 0.0  # time.monotonic() of the next full pass
        self.leading: bool | None = None  # the last pass's lease: ``Lease.hold()``

    def run_pass(self) -> Counter:
        """One pass: as leader, sweep the due jobs, and once per interval recover lost jobs
        and sweep fully; sweep too when Redis cannot be reached (deletion is idempotent);
        then the gauges. Returns counts by kind."""
        leading = self.leading = self.lease.hold()
        counts: Counter = Counter()
        if leading is False:
            metrics.observe(self.settings, self.clock(), leading=False)
            return counts
        now = self.clock()
        full = time.monotonic() >= self.next_full_pass
        if full:
            self.next_full_pass = time.monotonic() + self.settings.sweep_interval_s
        if leading is None:
            log.warning("Redis is unreachable: sweeping without the lease")
        elif full:
            recovered = recovery.recover(self.settings, now)
            for action, n in recovered.items():
                metrics.RECOVERED.labels(action).inc(n)
            counts.update(recovered)
        start = time.perf_counter()
        deleted: Counter = Counter()
        try:
            retention.sweep(self.settings, now, deleted, full=full)
        finally:  # what a failed sweep deleted before it failed is counted too
            for kind, n in deleted.items():
                metrics.DELETIONS.labels(kind).inc(n)
        metrics.SWEEP_SECONDS.observe(time.perf_counter() - start)
        metrics.LAST_SWEEP.set(time.time())
        counts.update(deleted)
        metrics.observe(self.settings, self.clock(), leading=bool(leading))
        return +counts  # without zeros

    def seconds_to_next_pass(self) -> float:
        """Until the next deadline, at most ``sweep_interval_s``, at least ``MIN_WAIT_S``; a
        standby, which deletes nothing, waits the whole interval (the lease outlives two)."""
        wait = self.settings.sweep_interval_s
        if self.leading is False:
            return wait
        deadline = retention.next_deadline(self.settings)
        if deadline is not None:
            wait = min(wait, (deadline - self.clock()).total_seconds() + 0.05)
        return max(MIN_WAIT_S, wait)


def run_pass(settings: Settings, now: dt.datetime | None = None) -> Counter:
    """One pass of a scheduler whose clock reads ``now`` (default: the real clock)."""
    scheduler = Scheduler(settings, (lambda: now) if now else utcnow)
    try:
        return scheduler.run_pass()
    finally:
        scheduler.lease.release()


def run_scheduler(settings: Settings, once: bool = False) -> None:
    """Run passes until SIGTERM or SIGINT (or just one with ``once``), serving metrics."""
    from dicomstl.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.scheduler_metrics_port,
                  "DICOMSTL_SCHEDULER_METRICS_PORT")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler = Scheduler(settings)
    log.info("scheduler: a pass at least every %.0f s and at each deadline",
             settings.sweep_interval_s)
    try:
        while True:
            wait = settings.sweep_interval_s
            try:
                counts = scheduler.run_pass()
                if counts:
                    log.info("scheduler pass: %s", dict(counts))
                wait = scheduler.seconds_to_next_pass()
            except Exception:  # a database or Redis outage must not end the loop
                log.exception("scheduler pass failed; trying again next interval")
            if once or stop.wait(wait):
                return
    finally:
        scheduler.lease.release()
