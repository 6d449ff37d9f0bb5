"""Jobs: made by the web, run by the worker, recovered and deleted by the scheduler.

States move ``uploaded → queued → running → done | failed → deleted``. A job is stored
and queued in one step once its upload has arrived (or not at all, when Redis cannot be
reached); a job waiting for the user to pick a series goes back to ``uploaded`` with
``choices``, and so does a job with the option ``preview`` once its threshold preview is
made, until its owner picks a level (``choose_level``). Each time the job is put on its
queue anew it gets a new run number (its RQ entry is ``<id>_r<run>``), so a run given up
for lost cannot overwrite the next; ``attempts`` counts the runs a worker actually started
and ``lost_runs`` those whose worker was lost.
A job deleted while it runs stops at the worker's next stage. Every row holds its deletion
deadline (``delete_after``): an upload's arrival + ``upload_ttl_s`` until it is converted,
the longest the run may take while it runs, then the conversion's end + ``result_ttl_s``.
The raw upload is deleted as soon as the conversion ends, done or failed; the scheduler
(``scheduler/retention.py``) deletes whatever reaches its deadline. A job is paid for when it
is stored (its organisation's credits, or a free conversion: ``credits.Charge``) and gets
that back, once, if it ends without a model (failed, or deleted before it was done).
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
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from dicomstl import credits, free_tier, storage
from dicomstl import queue as q
from dicomstl import retention_policy as policy
from dicomstl.credits import Charge
from dicomstl.db import Job, session_scope, utcnow
from dicomstl.options import STAGES, parse_options
from dicomstl.queue import QueueUnavailable
from dicomstl.settings import Settings

log = logging.getLogger(__name__)

#: What the job says while its threshold preview waits for a level.
PREVIEW_MESSAGE = ("the threshold preview is ready: pick a level and convert at it (the "
                   "preview and the upload are deleted at the deadline if you do not)")
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


class RunCancelled(Exception):
    """The job of this run was deleted, or a newer run superseded this one: stop."""


def request_hash(options: dict, callback_url: str | None, file_digests: Sequence[str]) -> str:
    """SHA-256 (hex) of a submission: its options, callback URL and each file's SHA-256."""
    text = json.dumps({"options": options, "callback_url": callback_url,
                       "files": list(file_digests)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def new_job_id() -> str:
    """A random, unguessable id (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def create_job(settings: Settings, owner: str, options: dict, parts: list[Path],
               queue_name: str, idempotency_key: str | None = None,
               callback_url: str | None = None, submitted_hash: str | None = None,
               charge: Charge | None = None,
               api_key_id: int | None = None) -> tuple[Job, bool]:
    """Store an upload as a new job, pay for it and queue it; (job, created).

    With an ``idempotency_key`` the same owner's earlier job for that key is returned instead
    (created is False) and the repeated upload is discarded; if that job was made from a
    different request (``submitted_hash``, see ``request_hash``), IdempotencyConflict.
    ``charge`` says how it is paid: its credits are taken in the transaction that stores the
    row (NoCredits, and nothing kept, when the balance is short). A free conversion taken
    for it is given back if the job is not made. QueueUnavailable when Redis cannot be
    reached: then nothing is kept (and nothing paid).
    """
    url = settings.database_url
    charge = charge or Charge()
    try:
        if idempotency_key:
            earlier = find_idempotent(url, owner, idempotency_key)
            if earlier is not None:
                _discard(parts)
                _return_free(settings, charge.free_quota_key)
                return _same_request(earlier, submitted_hash), False
        return _create(settings, owner, options, parts, queue_name, idempotency_key,
                       callback_url, submitted_hash, charge, api_key_id)
    except BaseException:
        _return_free(settings, charge.free_quota_key)
        raise


def _create(settings: Settings, owner: str, options: dict, parts: list[Path], queue_name: str,
            idempotency_key: str | None, callback_url: str | None, submitted_hash: str | None,
            charge: Charge, api_key_id: int | None) -> tuple[Job, bool]:
    url = settings.database_url
    job_id = new_job_id()
    now = utcnow()
    # stored first, so the row below never names missing files
    n_files, total_bytes = storage.store_upload(settings, job_id, parts)
    job = Job(id=job_id, owner=owner, state="queued", queue=queue_name, options=options,
              idempotency_key=idempotency_key, request_hash=submitted_hash,
              callback_url=callback_url, created_at=now, queued_at=now, run=1, attempts=0,
              lost_runs=0, stages_done=[], delete_after=policy.upload_deadline(settings, now),
              upload_files=n_files, upload_bytes=total_bytes, api_key_id=api_key_id,
              credits=charge.credits, free_quota_key=charge.free_quota_key,
              payment_returned=False)
    try:
        with session_scope(url) as session:
            session.add(job)
            if charge.credits:  # in this transaction: the row and the payment, or neither
                credits.take(session, charge.org_id, charge.credits, job_id, now)
    except BaseException as exc:
        storage.delete_job_files(settings, job_id)
        if isinstance(exc, IntegrityError):  # a concurrent retry with this key won the race
            earlier = find_idempotent(url, owner, idempotency_key or "")
            if earlier is not None:
                _return_free(settings, charge.free_quota_key)
                return _same_request(earlier, submitted_hash), False
        raise
    try:
        q.enqueue_conversion(settings, job_id, queue_name, 1)
    except QueueUnavailable:  # refuse rather than keep an upload nobody can convert now
        with session_scope(url) as session:
            credits.give_back(session, job_id)  # its credits (create_job: a free conversion)
            session.execute(delete(Job).where(Job.id == job_id))
        storage.delete_job_files(settings, job_id)
        raise
    return job, True


def _return_free(settings: Settings, key: str | None) -> None:
    if key:
        free_tier.give_back(settings, key)


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


def claim_jobs(settings: Settings, from_owner: str, to_owner: str) -> int:
    """Give an owner's jobs to another (the jobs a browser made before its user logged in
    go to the user's organisation); how many. Deleted jobs stay where they are."""
    with session_scope(settings.database_url) as session:
        return session.execute(update(Job).where(
            Job.owner == from_owner, Job.state != "deleted").values(owner=to_owner)).rowcount


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
        q.enqueue_conversion(settings, job_id, queue_name, run)
    except QueueUnavailable:
        log.warning("job %s stays queued without a queue entry: Redis is unreachable; the "
                    "scheduler will enqueue it", job_id[:8])
    return get_job(settings, job_id)


def requeue(settings: Settings, job_id: str, run: int) -> bool:
    """Put a queued job whose queue entry was lost (a Redis restart) back on its queue as the
    same run: a run that never started is no attempt. False if it is no longer waiting;
    QueueUnavailable when Redis cannot be reached."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != "queued" or job.run != run:
            return False
        job.queued_at = utcnow()
        queue_name = job.queue
    q.enqueue_conversion(settings, job_id, queue_name, run)
    return True


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


def awaits_level(job: Job) -> bool:
    """Whether the job's preview is made and it waits for its owner to pick a level."""
    return job.state == "uploaded" and bool(job.options.get("preview")) and not job.choices


def preview_pending(job: Job) -> bool:
    """Whether the job will have a preview but has none yet (queued, running, or waiting for
    a series to be chosen first)."""
    return bool(job.options.get("preview")) and job.state in ("uploaded", "queued", "running") \
        and not awaits_level(job)


def choose_level(settings: Settings, job_id: str, owner: str, level: float) -> Job:
    """Convert a job whose preview waits for a level, at ``level`` (the volume's units: HU
    for CT), instead of its preset or level; JobConflict when it does not wait for one,
    OptionsError for a level out of range."""
    job = get_job(settings, job_id, owner)
    if not awaits_level(job):
        raise JobConflict("this job is not waiting for a level: a level is chosen after its "
                          "preview (the option preview), once the preview is ready")
    options = {k: v for k, v in job.options.items() if k not in ("preview", "preset", "level")}
    options = parse_options({**options, "level": level})
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job_id)
        row.options = options
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
    free_key = None
    with session_scope(settings.database_url) as session:
        claimed = session.execute(update(Job).where(Job.id == job_id, Job.state != "deleted")
                                  .values(**values)).rowcount == 1
        if claimed:  # the row is locked by the update until this transaction ends
            job = session.get(Job, job_id)
            job.options = {k: v for k, v in job.options.items() if k != "series"}
            if job.report:
                job.report = {k: v for k, v in job.report.items() if k in policy.KEPT_REPORT}
            free_key = credits.give_back(session, job_id)  # deleted before it was done
    _return_free(settings, free_key)
    return claimed


def purge_queue_entries(settings: Settings, job_id: str, runs: int | None = None) -> int:
    """Delete a job's RQ entries (and their results) from Redis; how many were there.

    An entry a worker is running stays until its run ends (the worker's ``finish`` sees the
    job deleted, and the scheduler's scan of Redis deletes the entry). Redis being down is
    logged: that scan catches up later.
    """
    if runs is None:
        runs = get_job(settings, job_id).run
    try:
        return q.delete_job_entries(settings.redis_url, job_id, runs)
    except RedisError:
        log.warning("could not delete job %s's queue entries: Redis is unreachable; the "
                    "scheduler will", job_id[:8])
        return 0


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
        job.delete_after = max(job.delete_after, policy.run_deadline(settings, job.started_at))
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
    free_key = None
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
        job.delete_after = policy.result_deadline(settings, now)
        job.message = message
        if report is not None:
            job.state, job.report, job.result_bytes = "done", report, result_bytes
            job.stages_done = list(STAGES)
        else:
            job.state = "failed"
            free_key = credits.give_back(session, job_id)  # no model: nothing to pay
        job.callback_pending = job.callback_url is not None
    if job.state == "failed":  # nothing to keep, not even a partial model or empty folders
        _return_free(settings, free_key)
        storage.delete_job_files(settings, job_id)
    else:
        storage.delete_upload(settings, job_id)
    if job.callback_pending:
        queue_callback(settings, job_id)
    return job


def finish_preview(settings: Settings, job_id: str, run: int) -> Job | None:
    """End run ``run`` after its threshold preview: the job waits (``uploaded``) for its
    owner's level, keeping the upload and the preview until then or its deadline. A job
    deleted meanwhile loses the preview too; a superseded run changes nothing."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.state == "running" and job.run == run:
            job.stage, job.heartbeat_at = None, None
            job.state, job.message = "uploaded", PREVIEW_MESSAGE
            return job
    if job is None or job.state == "deleted":
        storage.delete_job_files(settings, job_id)
    return job


def queue_callback(settings: Settings, job_id: str) -> bool:
    """Put an ended job's callback on the ``callbacks`` queue; False if Redis is unreachable
    (the scheduler queues it again: ``callback_pending`` stays until it is delivered)."""
    try:
        q.enqueue_callback(settings, job_id)
    except QueueUnavailable:
        log.warning("job %s's callback waits: Redis is unreachable; the scheduler will queue "
                    "it", job_id[:8])
        return False
    return True


def callback_settled(settings: Settings, job_id: str) -> None:
    """The callback was delivered, or will never be (no longer pending)."""
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(callback_pending=False))


# The scheduler's side ------------------------------------------------------------------------

def lose_run(settings: Settings, job_id: str, stalled_before: dt.datetime) -> str | None:
    """A running job whose worker sent no heartbeat since ``stalled_before`` lost its worker:
    count the lost run, then queue a new run, or fail the job after ``max_attempts`` losses.
    "rerun", "failed", or None when the job moved on meanwhile."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != "running" or job.heartbeat_at >= stalled_before:
            return None
        job.lost_runs += 1
        lost, run = job.lost_runs, job.run
        log.warning("job %s lost its worker during run %d", job_id[:8], run)
        if lost < settings.max_attempts:
            job.state = "queued"  # enqueue below starts the next run
    if lost < settings.max_attempts:
        enqueue(settings, job_id)
        return "rerun"
    finish(settings, job_id, run, message=LOST_MESSAGE.format(n=lost))
    return "failed"
