"""Jobs: made by the web, run by the worker, recovered and deleted by the scheduler.

States move ``uploaded → queued → running → done | failed → deleted``. A job is stored
and queued in one step once its upload has arrived (or not at all, when Redis cannot be
reached); a job waiting for the user to pick a series goes back to ``uploaded`` with
``choices``. Each time the job is put on its queue anew it gets a new run number (its RQ
entry is ``<id>_r<run>``), so a run given up for lost cannot overwrite the next; ``attempts``
counts the runs a worker actually started and ``lost_runs`` those whose worker was lost.
A job deleted while it runs stops at the worker's next stage. Every row holds its deletion
deadline (``delete_after``): an upload's arrival + ``upload_ttl_s`` until it is converted,
the longest the run may take while it runs, then the conversion's end + ``result_ttl_s``.
The raw upload is deleted as soon as the conversion ends, done or failed; the scheduler
(``scheduler/retention.py``) deletes whatever reaches its deadline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import RedisError
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from dicomstl import queue as q
from dicomstl import storage
from dicomstl.db import ENDED, Job, session_scope, utcnow
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


class IdempotencyConflict(JobConflict):
    """An Idempotency-Key was used before for a different request."""


class QueueUnavailable(Exception):
    """Redis cannot be reached, so a new job cannot be queued (nothing was stored)."""


class RunCancelled(Exception):
    """The job of this run was deleted, or a newer run superseded this one: stop."""


def run_entry_id(job_id: str, run: int) -> str:
    """The RQ entry id of a job's run."""
    return f"{job_id}_r{run}"


def callback_entry_id(job_id: str) -> str:
    """The RQ entry id of a job's callback."""
    return f"{job_id}_cb"


def request_hash(options: dict, callback_url: str | None, file_digests: Sequence[str]) -> str:
    """SHA-256 (hex) of a submission: its options, callback URL and each file's SHA-256."""
    text = json.dumps({"options": options, "callback_url": callback_url,
                       "files": list(file_digests)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def new_job_id() -> str:
    """A random, unguessable id (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def _deadline(seconds: float, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) + dt.timedelta(seconds=seconds)


def create_job(settings: Settings, owner: str, options: dict, parts: list[Path],
               queue_name: str, idempotency_key: str | None = None,
               callback_url: str | None = None,
               submitted_hash: str | None = None) -> tuple[Job, bool]:
    """Store an upload as a new job and queue it; (job, created).

    With an ``idempotency_key`` the same owner's earlier job for that key is returned instead
    (created is False) and the repeated upload is discarded; if that job was made from a
    different request (``submitted_hash``, see ``request_hash``), IdempotencyConflict.
    QueueUnavailable when Redis cannot be reached: then nothing is kept.
    """
    url = settings.database_url
    if idempotency_key:
        earlier = find_idempotent(url, owner, idempotency_key)
        if earlier is not None:
            _discard(parts)
            return _same_request(earlier, submitted_hash), False
    job_id = new_job_id()
    now = utcnow()
    # stored first, so the row below never names missing files
    n_files, total_bytes = storage.store_upload(settings, job_id, parts)
    job = Job(id=job_id, owner=owner, state="queued", queue=queue_name, options=options,
              idempotency_key=idempotency_key, request_hash=submitted_hash,
              callback_url=callback_url, created_at=now, queued_at=now, run=1, attempts=0,
              lost_runs=0, stages_done=[], delete_after=_deadline(settings.upload_ttl_s, now),
              upload_files=n_files, upload_bytes=total_bytes)
    try:
        with session_scope(url) as session:
            session.add(job)
    except BaseException as exc:
        storage.delete_job_files(settings, job_id)
        if isinstance(exc, IntegrityError):  # a concurrent retry with this key won the race
            earlier = find_idempotent(url, owner, idempotency_key or "")
            if earlier is not None:
                return _same_request(earlier, submitted_hash), False
        raise
    try:
        _put_on_queue(settings, job_id, queue_name, 1)
    except QueueUnavailable:  # refuse rather than keep an upload nobody can convert now
        with session_scope(url) as session:
            session.execute(delete(Job).where(Job.id == job_id))
        storage.delete_job_files(settings, job_id)
        raise
    return job, True


def _same_request(earlier: Job, submitted_hash: str | None) -> Job:
    if submitted_hash and earlier.request_hash and submitted_hash != earlier.request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for a different request (other files, "
            "options or callback_url); send a new key with each new submission")
    return earlier


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
    """Put the job on its queue as a new run, which supersedes any older one; returns the
    updated row. If Redis is down the job stays queued and the scheduler queues it later."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        job.run += 1
        job.state = "queued"
        job.queued_at = utcnow()
        job.message = None
        run = job.run
        queue_name = job.queue
    try:
        _put_on_queue(settings, job_id, queue_name, run)
    except QueueUnavailable:
        log.warning("job %s stays queued without a queue entry: Redis is unreachable; the "
                    "scheduler will enqueue it", job_id[:8])
    return get_job(settings, job_id)


def _put_on_queue(settings: Settings, job_id: str, queue_name: str, run: int) -> None:
    """The RQ entry for run ``run``; QueueUnavailable when Redis cannot be reached."""
    try:
        q.queue(settings.redis_url, queue_name).enqueue_call(
            "gpu_worker.tasks.run_conversion", args=(job_id, run),
            job_id=run_entry_id(job_id, run), timeout=settings.job_timeout_s,
            result_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            ttl=settings.upload_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=2, interval=[5, 30]), description="conversion")
    except RedisError as exc:
        raise QueueUnavailable(str(exc)) from None


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
    return [run_entry_id(job_id, n) for n in range(1, runs + 1)] + [callback_entry_id(job_id)]


def purge_queue_entries(settings: Settings, job_id: str, runs: int | None = None) -> int:
    """Delete a job's RQ entries (and their results) from Redis; how many were there.

    An entry a worker is running stays until its run ends (the worker's ``finish`` sees the
    job deleted, and the scheduler's scan of Redis deletes the entry). Redis being down is
    logged: that scan catches up later.
    """
    if runs is None:
        runs = get_job(settings, job_id).run
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
    """Mark the job running for run ``run`` (one more attempt); None when that run is stale
    or the job is gone."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.run != run or job.state not in ("queued", "running"):
            return None
        job.attempts += 1
        job.state = "running"
        job.started_at = job.heartbeat_at = utcnow()
        # while it runs, the deadline is the latest the run can end (then it is the result's)
        job.delete_after = max(job.delete_after, _deadline(
            settings.job_timeout_s + settings.stall_after_s, job.started_at))
        job.stage = None
        job.stages_done = []
        return job


def record_progress(settings: Settings, job_id: str, run: int, stage: str, state: str) -> None:
    """A pipeline progress event. Stages run one after another, so a stage's start also marks
    the one before it done: one write per stage (the last is marked done by ``finish``).
    RunCancelled when the job was deleted or this run superseded: the stage must not start."""
    if state != "start":
        return
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != "running" or job.run != run:
            raise RunCancelled(job_id)
        job.heartbeat_at = utcnow()
        if job.stage is not None:
            job.stages_done = [*job.stages_done, job.stage]
        job.stage = stage


def heartbeat(settings: Settings, job_id: str, run: int) -> bool:
    """Note that run ``run``'s worker is alive; False when the run is no longer current (the
    job was deleted, or a newer run took over)."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != "running" or job.run != run:
            return False
        job.heartbeat_at = utcnow()
        return True


def is_current(settings: Settings, job_id: str, run: int) -> bool:
    """Whether run ``run`` still owns the job (it is not deleted, and no newer run exists)."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        return job is not None and job.state in ("queued", "running") and job.run == run


def requeue_after_error(settings: Settings, job_id: str, run: int) -> None:
    """A transient failure: the job waits for RQ's retry of the same run."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == "running" and job.run == run:
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
        if job.state != "running" or job.run != run:
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
        job.callback_pending = job.callback_url is not None
    if job.state == "failed":  # nothing to keep, not even a partial model or empty folders
        storage.delete_job_files(settings, job_id)
    else:
        storage.delete_upload(settings, job_id)
    if job.callback_pending:
        queue_callback(settings, job_id)
    return job


def queue_callback(settings: Settings, job_id: str) -> bool:
    """Put an ended job's callback on the ``callbacks`` queue; False if Redis is unreachable
    (the scheduler queues it again: ``callback_pending`` stays until it is delivered)."""
    try:
        q.queue(settings.redis_url, "callbacks").enqueue_call(
            "dicomstl.callbacks.deliver", args=(job_id,), job_id=callback_entry_id(job_id),
            result_ttl=0, failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=4, interval=[10, 60, 300, 900]), description="callback")
    except RedisError:
        log.warning("job %s's callback waits: Redis is unreachable; the scheduler will queue "
                    "it", job_id[:8])
        return False
    return True


def callback_settled(settings: Settings, job_id: str) -> None:
    """The callback was delivered, or will never be (no longer pending)."""
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(callback_pending=False))


# The scheduler's side ------------------------------------------------------------------------

def recover(settings: Settings, now: dt.datetime | None = None) -> dict[str, int]:
    """Re-run jobs whose worker was lost (until ``max_attempts`` losses), then fail them; put
    queued jobs and pending callbacks whose queue entry is gone (a Redis restart) back on
    their queues, as the same run: a run that never started is no attempt. Returns counts."""
    now = now or utcnow()
    stalled_before = now - dt.timedelta(seconds=settings.stall_after_s)
    counts = {"rerun": 0, "failed": 0, "requeued": 0}
    with session_scope(settings.database_url) as session:
        stalled = list(session.scalars(select(Job.id).where(
            Job.state == "running", Job.heartbeat_at < stalled_before)))
        queued = list(session.execute(select(Job.id, Job.run, Job.queue).where(
            Job.state == "queued", Job.queued_at < stalled_before)))
        callbacks = list(session.scalars(select(Job.id).where(
            Job.callback_pending, Job.state.in_(ENDED), Job.finished_at < stalled_before)))
    for job_id in stalled:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job.state != "running" or job.heartbeat_at >= stalled_before:
                continue
            job.lost_runs += 1
            lost, run = job.lost_runs, job.run
            log.warning("job %s lost its worker during run %d", job_id[:8], run)
            if lost < settings.max_attempts:
                job.state = "queued"  # enqueue below starts the next run
        if lost < settings.max_attempts:
            enqueue(settings, job_id)
            counts["rerun"] += 1
        else:
            finish(settings, job_id, run, message=LOST_MESSAGE.format(n=lost))
            counts["failed"] += 1
    try:
        counts["requeued"] += _requeue_lost_entries(settings, queued, callbacks)
    except (RedisError, QueueUnavailable):
        log.warning("Redis is unreachable: lost queue entries are checked on a later pass")
    return counts


def _requeue_lost_entries(settings: Settings, queued: list, callbacks: list[str]) -> int:
    connection = q.connect(settings.redis_url)

    def gone(rq_id: str) -> bool:
        try:
            return RQJob.fetch(rq_id, connection=connection).get_status() is None
        except NoSuchJobError:
            return True

    requeued = 0
    for job_id, run, queue_name in queued:
        if gone(run_entry_id(job_id, run)):
            log.warning("job %s was queued but its queue entry is gone; queued again",
                        job_id[:8])
            with session_scope(settings.database_url) as session:
                session.execute(update(Job).where(Job.id == job_id, Job.state == "queued",
                                                  Job.run == run).values(queued_at=utcnow()))
            _put_on_queue(settings, job_id, queue_name, run)
            requeued += 1
    for job_id in callbacks:
        if gone(callback_entry_id(job_id)) and queue_callback(settings, job_id):
            log.warning("job %s's callback was not delivered and its queue entry is gone; "
                        "queued again", job_id[:8])
            requeued += 1
    return requeued


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
