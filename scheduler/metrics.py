"""The scheduler's metrics: proof that retention holds, and the state of jobs and queues.

Every replica computes the gauges on every pass, leading or not, so a stuck leader shows as
overdue items on the others. Ages and deadlines use the scheduler's (injected) clock.
"""

from __future__ import annotations

import datetime as dt

from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError
from rq import worker_registration
from sqlalchemy import func, select

from dicomstl import queue as q
from dicomstl import storage
from dicomstl.db import ENDED, STATES, Job, session_scope
from dicomstl.retention_policy import ROW_RULES, RowRule
from dicomstl.settings import Settings
from scheduler.retention import count_rows_before

#: An item is overdue when its deadline passed longer ago than this (seconds). The scheduler
#: wakes for each deadline, so a healthy one deletes within about a second.
OVERDUE_GRACE_S = 60
#: Where the files of jobs in each state are: an upload until the conversion ends, then a
#: result.
HOLDS_UPLOAD = ("uploaded", "queued", "running")
DELETION_KINDS = ("upload", "result", "incoming", "orphan", "mail", "redis_job",
                  *(rule.kind for rule in ROW_RULES))

OLDEST_UPLOAD = Gauge("dicomstl_retention_oldest_upload_age_seconds",
                      "Age of the oldest upload still stored (0 when none)")
OLDEST_RESULT = Gauge("dicomstl_retention_oldest_result_age_seconds",
                      "Time since the conversion of the oldest result still stored (0 when none)")
OVERDUE = Gauge("dicomstl_retention_overdue_items",
                "Items past their deletion deadline by more than a minute (must stay 0)",
                ["kind"])
DELETIONS = Counter("dicomstl_retention_deletions_total", "Items deleted by the scheduler",
                    ["kind"])
SWEEP_SECONDS = Histogram("dicomstl_scheduler_sweep_duration_seconds",
                          "Duration of one retention sweep",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LAST_SWEEP = Gauge("dicomstl_scheduler_last_sweep_timestamp_seconds",
                   "When the last sweep of this replica ended (Unix time)")
LAST_PASS = Gauge("dicomstl_scheduler_last_pass_timestamp_seconds",
                  "When this replica last finished a pass and set these gauges, leading or "
                  "standing by (Unix time; `dicomstl health scheduler` checks it)")
LEADER = Gauge("dicomstl_scheduler_leader", "1 while this replica holds the lease")
RECOVERED = Counter("dicomstl_scheduler_recovered_jobs_total",
                    "Jobs whose worker was lost (rerun, failed) or whose queue entry vanished "
                    "(requeued)", ["action"])
QUEUE_LENGTH = Gauge("dicomstl_queue_length", "Entries waiting on each RQ queue", ["queue"])
JOBS = Gauge("dicomstl_jobs", "Job rows in each state", ["state"])
WORKERS = Gauge("dicomstl_workers_live", "RQ workers whose heartbeat is current")

for _kind in DELETION_KINDS:
    DELETIONS.labels(_kind)
for _action in ("rerun", "failed", "requeued"):
    RECOVERED.labels(_action)


def observe(settings: Settings, now: dt.datetime, leading: bool,
            rules: tuple[RowRule, ...] = ROW_RULES) -> None:
    """Set every gauge from the database, the data folder and Redis, as of ``now``."""
    LEADER.set(1 if leading else 0)
    late = now - dt.timedelta(seconds=OVERDUE_GRACE_S)
    with session_scope(settings.database_url) as session:
        by_state = {state: n for state, n in session.execute(
            select(Job.state, func.count()).group_by(Job.state))}
        oldest_upload = session.scalar(select(func.min(Job.created_at)).where(
            Job.state.in_(HOLDS_UPLOAD)))
        oldest_result = session.scalar(select(func.min(Job.finished_at)).where(
            Job.state == "done"))
        overdue_uploads = session.scalar(select(func.count()).select_from(Job).where(
            Job.state.in_(HOLDS_UPLOAD), Job.delete_after < late))
        overdue_results = session.scalar(select(func.count()).select_from(Job).where(
            Job.state.in_(ENDED), Job.delete_after < late))
    for state in STATES:
        JOBS.labels(state).set(by_state.get(state, 0))
    incoming = [mtime for _part, mtime in storage.incoming_parts(settings)]
    ages = [now.timestamp() - t for t in incoming]
    if oldest_upload:
        ages.append((now - oldest_upload).total_seconds())
    OLDEST_UPLOAD.set(max([0.0, *ages]))
    OLDEST_RESULT.set(max(0.0, (now - oldest_result).total_seconds()) if oldest_result else 0)
    OVERDUE.labels("upload").set(overdue_uploads or 0)
    OVERDUE.labels("result").set(overdue_results or 0)
    parts_cutoff = late.timestamp() - settings.upload_ttl_s
    OVERDUE.labels("incoming").set(sum(t < parts_cutoff for t in incoming))
    mail_cutoff = late.timestamp() - settings.mail_keep_s
    OVERDUE.labels("mail").set(sum(t < mail_cutoff for _p, t in storage.mail_files(settings)))
    for rule in rules:
        OVERDUE.labels(rule.kind).set(count_rows_before(settings, rule, rule.cutoff(late)))
    _observe_queues(settings)
    LAST_PASS.set_to_current_time()  # the real clock: health checks compare it with theirs


def _observe_queues(settings: Settings) -> None:
    try:
        connection = q.connect(settings.redis_url)
        for name in q.QUEUES:
            QUEUE_LENGTH.labels(name).set(q.queue(settings.redis_url, name).count)
        # a worker's key expires when its heartbeats stop (a killed worker stays registered)
        keys = worker_registration.get_keys(connection=connection)
        WORKERS.set(sum(1 for key in keys if connection.exists(key)))
    except RedisError:
        pass  # the gauges keep their last values; the scheduler logs Redis outages
