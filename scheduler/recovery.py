"""Recovery: jobs whose worker was lost, and queue entries a Redis restart lost.

A running job without a heartbeat for ``stall_after_s`` lost its worker (it died, even by
SIGKILL): it runs again, and fails with a clear message after ``max_attempts`` losses. A
queued job, or an ended job's undelivered callback, whose RQ entry is gone is queued again
as the same run, so it costs no attempt.
"""

from __future__ import annotations

import datetime as dt
import logging

from redis.exceptions import RedisError
from sqlalchemy import select

from dicomstl import jobs
from dicomstl import queue as q
from dicomstl.db import ENDED, Job, session_scope, utcnow
from dicomstl.queue import QueueUnavailable
from dicomstl.settings import Settings

log = logging.getLogger(__name__)


def recover(settings: Settings, now: dt.datetime | None = None) -> dict[str, int]:
    """One recovery pass at ``now``; counts of ``rerun``, ``failed`` and ``requeued`` jobs."""
    now = now or utcnow()
    stalled_before = now - dt.timedelta(seconds=settings.stall_after_s)
    counts = {"rerun": 0, "failed": 0, "requeued": 0}
    with session_scope(settings.database_url) as session:
        stalled = list(session.scalars(select(Job.id).where(
            Job.state == "running", Job.heartbeat_at < stalled_before)))
        queued = list(session.execute(select(Job.id, Job.run).where(
            Job.state == "queued", Job.queued_at < stalled_before)))
        callbacks = list(session.scalars(select(Job.id).where(
            Job.callback_pending, Job.state.in_(ENDED), Job.finished_at < stalled_before)))
    for job_id in stalled:
        outcome = jobs.lose_run(settings, job_id, stalled_before)
        if outcome:
            counts[outcome] += 1
    try:
        counts["requeued"] += _requeue_lost_entries(settings, queued, callbacks)
    except (RedisError, QueueUnavailable):
        log.warning("Redis is unreachable: lost queue entries are checked on a later pass")
    return counts


def _requeue_lost_entries(settings: Settings, queued: list, callbacks: list[str]) -> int:
    requeued = 0
    for job_id, run in queued:
        if q.entry_missing(settings.redis_url, q.run_entry_id(job_id, run)) and \
                jobs.requeue(settings, job_id, run):
            log.warning("job %s was queued but its queue entry is gone; queued again",
                        job_id[:8])
            requeued += 1
    for job_id in callbacks:
        if q.entry_missing(settings.redis_url, q.callback_entry_id(job_id)) and \
                jobs.queue_callback(settings, job_id):
            log.warning("job %s's callback was not delivered and its queue entry is gone; "
                        "queued again", job_id[:8])
            requeued += 1
    return requeued
