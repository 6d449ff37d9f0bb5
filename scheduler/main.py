"""The scheduler's loop: every ``sweep_interval_s``, recover lost jobs and delete what is due.

Deadlines live in the job rows (see ``dicomstl.jobs``); this loop only enforces them, so a
scheduler that was down catches up on its next pass.
"""

from __future__ import annotations

import logging
import signal
import threading

from dicomstl import jobs
from dicomstl.settings import Settings

log = logging.getLogger(__name__)


def run_pass(settings: Settings) -> dict[str, int]:
    """One pass: recover stalled and lost jobs, then delete every job past its deadline."""
    counts = jobs.recover(settings)
    counts["deleted"] = jobs.sweep(settings)
    return counts


def run_scheduler(settings: Settings, once: bool = False) -> None:
    """Run passes until SIGTERM or SIGINT (or just one with ``once``)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("scheduler: a pass every %.0f s", settings.sweep_interval_s)
    while True:
        try:
            counts = run_pass(settings)
            if any(counts.values()):
                log.info("scheduler pass: %s", counts)
        except Exception:  # a database or Redis outage must not end the loop
            log.exception("scheduler pass failed; trying again next interval")
        if once or stop.wait(settings.sweep_interval_s):
            return
