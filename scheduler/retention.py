"""The sweep that enforces the retention policy (``dicomstl.retention_policy``: what is kept
and for how long), at the time of the injected clock (UTC). The raw upload goes when the
conversion ends (the worker deletes it, and ``scan_files`` deletes any it left).

Every deletion is idempotent: a sweep that stops half-way (a killed scheduler, a lost
database) is finished by the next one, and two schedulers running at once delete each item
once (``jobs.mark_deleted`` is a conditional update). Counts are by kind: ``upload``,
``result``, ``incoming``, ``orphan`` (files of no live job), ``mail`` (copies of e-mails),
``redis_job`` and one kind per row rule.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections import Counter

from redis.exceptions import RedisError
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from sqlalchemy import delete, func, select

from dicomstl import jobs, storage
from dicomstl import queue as q
from dicomstl import retention_policy as policy
from dicomstl.db import ENDED, Job, session_scope
from dicomstl.retention_policy import ROW_RULES, RowRule
from dicomstl.settings import Settings

log = logging.getLogger(__name__)

#: A folder in ``jobs/`` without a job row is only an orphan when older than this (seconds):
#: the web stores an upload a moment before it writes the job's row.
ORPHAN_GRACE_S = 600


def sweep(settings: Settings, now: dt.datetime, counts: Counter | None = None,
          rules: tuple[RowRule, ...] = ROW_RULES, full: bool = True) -> Counter:
    """A sweep at ``now``: due jobs; when ``full``, then the scans for files and Redis entries
    that no live job owns, and table rows (last, so a job row goes only after its files).
    Deletions are added to ``counts`` (by kind) as they happen, so a sweep that fails
    half-way still reports what it did; returns ``counts``."""
    counts = Counter() if counts is None else counts
    sweep_jobs(settings, now, counts)
    if not full:
        return counts
    scan_files(settings, now, counts)
    scan_redis(settings, counts)
    sweep_rows(settings, now, counts, rules)
    return counts


def sweep_jobs(settings: Settings, now: dt.datetime, counts: Counter) -> None:
    """Delete every job whose deadline has come: files, row (→ ``deleted``), Redis entries."""
    with session_scope(settings.database_url) as session:
        due = list(session.execute(select(Job.id, Job.state, Job.run).where(
            Job.delete_after <= now, Job.state != "deleted")))
    for job_id, state, runs in due:
        ended = state in ENDED
        message = None if ended else policy.OVERRUN_MESSAGE if state == "running" else (
            policy.unconverted_message(settings))
        if jobs.mark_deleted(settings, job_id, now, message):
            counts["result" if ended else "upload"] += 1
        # whoever marked it, the files and entries go (both idempotent)
        storage.delete_job_files(settings, job_id)
        counts["redis_job"] += jobs.purge_queue_entries(settings, job_id, runs)


def sweep_rows(settings: Settings, now: dt.datetime, counts: Counter,
               rules: tuple[RowRule, ...] = ROW_RULES) -> None:
    """Delete the rows each rule says are past their window."""
    for rule in rules:
        rows, older = rule.rows_before(rule.cutoff(now))
        with session_scope(settings.database_url) as session:
            counts[rule.kind] += session.execute(delete(rows).where(older)).rowcount or 0


def count_rows_before(settings: Settings, rule: RowRule, cutoff: dt.datetime) -> int:
    rows, older = rule.rows_before(cutoff)
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(rows).where(older)) or 0)


def _job_states(settings: Settings, job_ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    with session_scope(settings.database_url) as session:
        for start in range(0, len(job_ids), 500):
            states.update(session.execute(select(Job.id, Job.state).where(
                Job.id.in_(job_ids[start:start + 500]))).all())
    return states


def scan_files(settings: Settings, now: dt.datetime, counts: Counter) -> None:
    """Delete what no live job should have on disk: folders of deleted or unknown jobs, the
    upload (and preview) of a job whose conversion ended, a failed job's result, stale
    upload parts; and copies of e-mails past ``mail_keep_s``."""
    entries = list(settings.jobs_dir.iterdir())
    states = _job_states(settings, [p.name for p in entries])
    for path in entries:
        state = states.get(path.name)
        if state is None or state == "deleted":
            if state is None and _age_s(path, now) < ORPHAN_GRACE_S:
                continue  # being stored: its row is a moment away
            _remove(path)
            counts["orphan"] += 1
            log.info("deleted files of %s job %s", "a deleted" if state else "no",
                     path.name[:8])
            continue
        upload, result = (storage.upload_dir(settings, path.name),
                          storage.result_dir(settings, path.name))
        if state in ENDED and upload.exists():
            shutil.rmtree(upload, ignore_errors=True)
            counts["upload"] += 1
        if state in ENDED:  # the preview is made from the upload and goes with it
            shutil.rmtree(storage.preview_dir(settings, path.name), ignore_errors=True)
        if state == "failed" and result.exists():
            shutil.rmtree(result, ignore_errors=True)
            counts["result"] += 1
    counts["incoming"] += storage.sweep_incoming(settings, settings.upload_ttl_s,
                                                 now.timestamp())
    counts["mail"] += storage.sweep_mail(settings, now.timestamp())


def scan_redis(settings: Settings, counts: Counter) -> None:
    """Delete RQ entries (and their results) of jobs that are deleted or unknown, and the
    finished and failed registries' references to entries that expired."""
    connection = q.connect(settings.redis_url)
    try:
        for name in q.QUEUES:
            for registry in (FinishedJobRegistry, FailedJobRegistry):
                registry(name, connection=connection).cleanup()
        keys: dict[str, list[str]] = {}
        for raw in connection.scan_iter(match="rq:*", count=1000):
            name = raw.decode(errors="replace")
            job_id = q.job_of_key(name)
            if job_id:
                keys.setdefault(job_id, []).append(name)
        states = _job_states(settings, list(keys))
        for job_id, names in keys.items():
            if states.get(job_id, "deleted") != "deleted":
                continue
            for name in names:
                counts["redis_job"] += _delete_rq_key(connection, name)
    except RedisError:
        log.warning("the scan of Redis for deleted jobs' entries failed; next pass")


def _delete_rq_key(connection, name: str) -> int:
    if name.startswith("rq:results:"):  # results left by an entry that expired: not counted
        connection.delete(name)
        return 0
    return int(q.delete_entry(connection, name.split(":", 2)[2]))


def next_deadline(settings: Settings) -> dt.datetime | None:
    """The earliest deadline of a job not yet deleted (the scheduler wakes up for it)."""
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.min(Job.delete_after)).where(
            Job.state != "deleted"))


def _age_s(path, now: dt.datetime) -> float:
    try:
        return now.timestamp() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
