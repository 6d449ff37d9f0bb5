"""Jobs: made by the web, run by the worker, recovered and deleted by the scheduler.

States move ``uploaded → queued → running → done | failed → deleted``. A job is stored
and queued in one step once its upload has arrived; a job waiting for the user to pick a
series goes back to ``uploaded`` with ``choices``. Every row holds its deletion
deadline (``delete_after``): an upload's arrival + ``upload_ttl_s`` until it is converted,
the longest the run may take while it runs, then the conversion's end + ``result_ttl_s``.
The raw upload is deleted as soon as the conversion ends, done or failed; the scheduler
(``scheduler/retention.py``) deletes whatever reaches its deadline.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from pathlib import Path

from redis.exceptions import RedisError
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from dicomstl import queue as q
from dicomstl import storage
from dicomstl.db import Job, session_scope, utcnow
from dicomstl.settings import Settings
from gpu_worker.options import STAGES

log = logging.getLogger(__name__)

#: What a deleted job keeps of its report: the model's numbers, nothing about the series.
KEPT_REPORT = ("mesh", "bytes", "level", "level_source", "backend", "volume_shape_kji",
               "timings_s")

#: RQ's own expiry of a job's entries comes this long (seconds) after the job's deadline: the
#: scheduler deletes them at the deadline, with their places in RQ's registries (an entry
#: that expired first would leave those behind); the expiry only backs it up.
QUEUE_EXPIRY_MARGIN_S = 600

#: What a user sees when a worker died twice on the same job.
LOST_MESSAGE = ("the conversion stopped unexpectedly {n} times (the worker running it was "
                "lost); it was not retried again. Try a smaller crop or --downsample, or "
                "contact support with the job id.")


class JobNotFound(LookupError):
    """No such job for this owner (other owners' jobs are not found either)."""


class JobConflict(Exception):
    """The job is not in a state that allows this; the message says why."""


def new_job_id() -> str:
    """A random, unguessable id (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def _deadline(seconds: float, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) + dt.timedelta(seconds=seconds)


def create_job(settings: Settings, owner: str, options: dict, parts: list[Path],
               queue_name: str, idempotency_key: str | None = None,
               callback_url: str | None = None) -> tuple[Job, bool]:
    """Store an upload as a new job and queue it; (job, created).

    With an ``idempotency_key`` the same owner's earlier job for that key is returned instead
    (created is False) and the repeated upload is discarded.
    """
    url = settings.database_url
    if idempotency_key:
        earlier = find_idempotent(url, owner, idempotency_key)
        if earlier is not None:
            _discard(parts)
            return earlier, False
    job_id = new_job_id()
    now = utcnow()
    # stored first, so the row below never names missing files
    n_files, total_bytes = storage.store_upload(settings, job_id, parts)
    job = Job(id=job_id, owner=owner, state="queued", queue=queue_name, options=options,
              idempotency_key=idempotency_key, callback_url=callback_url, created_at=now,
              queued_at=now, attempts=1, stages_done=[],
              delete_after=_deadline(settings.upload_ttl_s, now), upload_files=n_files,
              upload_bytes=total_bytes)
    try:
        with session_scope(url) as session:
            session.add(job)
    except BaseException as exc:
        storage.delete_job_files(settings, job_id)
        if isinstance(exc, IntegrityError):  # a concurrent retry with this key won the race
            earlier = find_idempotent(url, owner, idempotency_key or "")
            if earlier is not None:
                return earlier, False
        raise
    _put_on_queue(settings, job_id, queue_name, 1)
    return job, True


def _discard(parts: list[Path]) -> None:
    for part in parts:
        part.unlink(missing_ok=True)


def find_idempotent(url: str, owner: str, key: str) -> Job | None:
    with session_scope(url) as session:
        return session.scalar(select(Job).where(Job.owner == owner,
                                                Job.idempotency_key == key))


def get_job(settings: Settings, job_id: str, owner: str | None = None) -> Job:
    """The job, checked to belong to ``owner`` unless owner is None; else JobNotFound."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
    if job is None or (owner is not None and not secrets.compare_digest(job.owner, owner)):
        raise JobNotFound(job_id)
    return job


def list_jobs(settings: Settings, owner: str, limit: int, offset: int) -> tuple[list[Job], int]:
    """An owner's jobs, newest first; (page, total)."""
    with session_scope(settings.database_url) as session:
        total = session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner))
        rows = session.scalars(select(Job).where(Job.owner == owner)
                               .order_by(Job.created_at.desc(), Job.id)
                               .limit(limit).offset(offset))
        return list(rows), int(total or 0)


def enqueue(settings: Settings, job_id: str) -> Job:
    """Put the job on its queue as a new run (attempt); returns the updated row."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        job.attempts += 1
        job.state = "queued"
        job.queued_at = utcnow()
        job.message = None
        run = job.attempts
        queue_name = job.queue
    _put_on_queue(settings, job_id, queue_name, run)
    return get_job(settings, job_id)


def _put_on_queue(settings: Settings, job_id: str, queue_name: str, run: int) -> None:
    """The RQ entry for run ``run``; if Redis is down, the scheduler enqueues it later."""
    try:
        q.queue(settings.redis_url, queue_name).enqueue_call(
            "gpu_worker.tasks.run_conversion", args=(job_id, run), job_id=f"{job_id}_r{run}",
            timeout=settings.job_timeout_s,
            result_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            ttl=settings.upload_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=2, interval=[5, 30]), description="conversion")
    except RedisError:
        log.warning("job %s stays queued without a queue entry: Redis is unreachable; the "
                    "scheduler will enqueue it", job_id[:8])


def choose_series(settings: Settings, job_id: str, owner: str, uid: str) -> Job:
    """Convert the series ``uid`` of a job that is waiting for a choice."""
    job = get_job(settings, job_id, owner)
    if job.state != "uploaded" or not job.choices:
        raise JobConflict("this job is not waiting for a series to be chosen")
    if uid not in {c["uid"] for c in job.choices}:
        raise JobConflict("that series is not in this upload")
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job_id)
        row.options = {**row.options, "series": uid}
        row.choices = None
    return enqueue(settings, job_id)


def delete_job(settings: Settings, job_id: str, owner: str | None,
               message: str | None = None) -> Job:
    """Delete a job's files and queue entries now and mark it deleted (the row stays, without
    files and without series details, so its owner learns it is gone)."""
    get_job(settings, job_id, owner)
    mark_deleted(settings, job_id, message=message)
    storage.delete_job_files(settings, job_id)
    purge_queue_entries(settings, job_id)
    return get_job(settings, job_id)


def mark_deleted(settings: Settings, job_id: str, now: dt.datetime | None = None,
                 message: str | None = None) -> bool:
    """Move a job to ``deleted`` and scrub its series details; True for the one caller that
    did it. A conditional UPDATE, so two schedulers (or a scheduler and the job's owner) never
    both count one deletion, on SQLite as on PostgreSQL. The caller deletes the files."""
    values: dict = {"state": "deleted", "deleted_at": now or utcnow(), "choices": None}
    if message:
        values["message"] = message
    with session_scope(settings.database_url) as session:
        claimed = session.execute(update(Job).where(Job.id == job_id, Job.state != "deleted")
                                  .values(**values)).rowcount == 1
        if claimed:  # the row is locked by the update until this transaction ends
            job = session.get(Job, job_id)
            job.options = {k: v for k, v in job.options.items() if k != "series"}
            if job.report:
                job.report = {k: v for k, v in job.report.items() if k in KEPT_REPORT}
    return claimed


def queue_entry_ids(job_id: str, runs: int) -> list[str]:
    """The ids of a job's RQ entries: one per run, and its callback."""
    return [f"{job_id}_r{n}" for n in range(1, runs + 1)] + [f"{job_id}_cb"]


def purge_queue_entries(settings: Settings, job_id: str, runs: int | None = None) -> int:
    """Delete a job's RQ entries (and their results) from Redis; how many were there.

    An entry a worker is running stays until its run ends (the worker's ``finish`` sees the
    job deleted, and the scheduler's scan of Redis deletes the entry). Redis being down is
    logged: that scan catches up later.
    """
    if runs is None:
        runs = get_job(settings, job_id).attempts
    connection = q.connect(settings.redis_url)
    removed = 0
    try:
        for rq_id in queue_entry_ids(job_id, max(runs, 1)):
            removed += q.delete_entry(connection, rq_id)
    except RedisError:
        log.warning("could not delete job %s's queue entries: Redis is unreachable; the "
                    "scheduler will", job_id[:8])
    return removed


# The worker's side ---------------------------------------------------------------------------

def start_run(settings: Settings, job_id: str, run: int) -> Job | None:
    """Mark the job running for run ``run``; None when that run is stale or the job is gone."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.attempts != run or job.state not in ("queued", "running"):
            return None
        job.state = "running"
        job.started_at = job.heartbeat_at = utcnow()
        # while it runs, the deadline is the latest the run can end (then it is the result's)
        job.delete_after = max(job.delete_after, _deadline(
            settings.job_timeout_s + settings.stall_after_s, job.started_at))
        job.stage = None
        job.stages_done = []
        return job


def record_progress(settings: Settings, job_id: str, stage: str, state: str) -> None:
    """A pipeline progress event. Stages run one after another, so a stage's start also marks
    the one before it done: one write per stage (the last is marked done by ``finish``)."""
    if state != "start":
        return
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.heartbeat_at = utcnow()
        if job.stage is not None:
            job.stages_done = [*job.stages_done, job.stage]
        job.stage = stage


def heartbeat(settings: Settings, job_id: str) -> None:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == "running":
            job.heartbeat_at = utcnow()


def requeue_after_error(settings: Settings, job_id: str) -> None:
    """A transient failure: the job waits for RQ's retry of the same run."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == "running":
            job.state = "queued"


def finish(settings: Settings, job_id: str, run: int, *, report: dict | None = None,
           result_bytes: int | None = None, message: str | None = None,
           choices: list[dict] | None = None) -> Job | None:
    """End run ``run``: done (with a report), failed (with a message) or waiting for a choice.

    The raw upload is deleted unless the job waits for a choice. A job deleted while it ran
    stays deleted and loses whatever the run wrote; a run that was given up for lost (a newer
    run exists) changes nothing. Returns the row, None if it is gone.
    """
    now = utcnow()
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            storage.delete_job_files(settings, job_id)
            return None
        if job.state == "deleted":
            storage.delete_job_files(settings, job_id)
            return job
        if job.state != "running" or job.attempts != run:
            return job
        job.stage = None
        job.heartbeat_at = None
        if choices:
            job.state, job.message, job.choices = "uploaded", message, choices
            return job
        job.finished_at = now
        job.delete_after = _deadline(settings.result_ttl_s, now)
        job.message = message
        if report is not None:
            job.state, job.report, job.result_bytes = "done", report, result_bytes
            job.stages_done = list(STAGES)
        else:
            job.state = "failed"
    if job.state == "failed":  # nothing to keep, not even a partial model or empty folders
        storage.delete_job_files(settings, job_id)
    else:
        storage.delete_upload(settings, job_id)
    if job.callback_url:
        q.queue(settings.redis_url, "callbacks").enqueue_call(
            "dicomstl.callbacks.deliver", args=(job_id,), job_id=f"{job_id}_cb", result_ttl=0,
            failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=4, interval=[10, 60, 300, 900]),
            description="callback")
    return job


# The scheduler's side ------------------------------------------------------------------------

def recover(settings: Settings, now: dt.datetime | None = None) -> dict[str, int]:
    """Re-run jobs whose worker died (once per ``max_attempts``), then fail them; requeue
    queued jobs whose queue entry is gone (a Redis restart). Returns counts."""
    now = now or utcnow()
    stalled_before = now - dt.timedelta(seconds=settings.stall_after_s)
    counts = {"rerun": 0, "failed": 0, "requeued": 0}
    with session_scope(settings.database_url) as session:
        stalled = list(session.scalars(select(Job.id).where(
            Job.state == "running", Job.heartbeat_at < stalled_before)))
        queued = list(session.execute(select(Job.id, Job.attempts).where(
            Job.state == "queued", Job.queued_at < stalled_before)))
    for job_id in stalled:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job.state != "running" or job.heartbeat_at >= stalled_before:
                continue
            runs = job.attempts
            log.warning("job %s lost its worker during run %d", job_id[:8], runs)
            if runs < settings.max_attempts:
                job.state = "queued"  # enqueue below starts the next run
                counts["rerun"] += 1
                rerun = True
            else:
                rerun = False
        if rerun:
            enqueue(settings, job_id)
        else:
            finish(settings, job_id, runs, message=LOST_MESSAGE.format(n=runs))
            counts["failed"] += 1
    connection = q.connect(settings.redis_url)
    for job_id, run in queued:
        try:
            status = RQJob.fetch(f"{job_id}_r{run}", connection=connection).get_status()
        except NoSuchJobError:
            status = None
        if status is None:
            log.warning("job %s was queued but its queue entry is gone; queued again",
                        job_id[:8])
            enqueue(settings, job_id)
            counts["requeued"] += 1
    return counts


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def public_view(job: Job) -> dict:
    """What the job's owner may see of it (JSON): no paths, no owner, no patient data."""
    done = [s for s in STAGES if s in (job.stages_done or [])]
    return {
        "id": job.id, "state": job.state, "queue": job.queue, "options": job.options,
        "created_at": _iso(job.created_at), "queued_at": _iso(job.queued_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "deleted_at": _iso(job.deleted_at), "delete_after": _iso(job.delete_after),
        "attempts": job.attempts, "stage": job.stage, "stages": list(STAGES),
        "stages_done": done, "progress": round(len(done) / len(STAGES), 3)
        if job.state != "done" else 1.0,
        "message": job.message, "choices": job.choices, "report": job.report,
        "upload": {"files": job.upload_files, "bytes": job.upload_bytes},
        "result_bytes": job.result_bytes,
    }
