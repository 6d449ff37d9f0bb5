"""The RQ jobs the worker runs: convert one stored upload, reporting progress and ending in a
clear state; and deliver an ended job's callback.

User errors (``ConversionError``) end the job failed with their message. A lost database or
Redis connection is transient: the job goes back to ``queued`` and RQ retries it with
backoff. A full disk fails the job at once with a message saying so, which deletes its files
(a retry would hold the upload and the partial model on the full disk meanwhile). Anything
else is a bug: the job fails with a generic message and the log gets the traceback, which
names no patient data (upload files have numbered names). A job
deleted while it runs (or given up for lost) stops before its next stage and writes nothing.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import OperationalError

from dicomstl import callbacks, jobs, storage
from dicomstl.errors import ConversionError, SeriesChoiceError
from dicomstl.options import result_format, to_pipeline
from dicomstl.settings import Settings
from gpu_worker import metrics
from gpu_worker import preview as threshold_preview
from gpu_worker.engines import Engine, resolve_backend
from gpu_worker.pipeline import convert

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, RedisError, OSError)
INTERNAL_MESSAGE = ("the conversion failed because of an internal error on our side; it has "
                    "been logged. Please try again later, or contact support with the job id.")
DISK_FULL_MESSAGE = ("the server ran out of disk space while converting this upload; its files "
                     "were deleted and it was not charged. Please try again later.")
#: The errors of a write that found no room: a full disk, or the service's quota used up.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
CHOICE_MESSAGE = "the upload holds several series that could become a model: pick one"


class _Heartbeat(threading.Thread):
    """Tells the scheduler this job's worker is alive while a long stage runs, and notices
    when the run is no longer wanted (``cancelled``)."""

    def __init__(self, settings: Settings, job_id: str, run: int):
        super().__init__(daemon=True, name="heartbeat")
        self.settings, self.job_id, self.run_number = settings, job_id, run
        self.stopped = threading.Event()
        self.cancelled = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_s):
            metrics.beat()
            try:
                if not jobs.heartbeat(self.settings, self.job_id, self.run_number):
                    self.cancelled.set()
                    return
            except TRANSIENT:
                log.warning("heartbeat for job %s failed; will try again", self.job_id[:8])


@dataclass
class _Worker:
    """This worker process's settings and engine, given once by the launcher
    (``use_settings``): RQ job functions take only ids (python-rq's advice), so this is how
    they reach them."""

    settings: Settings | None = None
    engine: Engine | None = None


_worker = _Worker()


def use_settings(settings: Settings, engine: Engine | None = None) -> None:
    """Give this worker process's job functions their settings and (warmed-up) engine; without
    an engine each conversion resolves the settings' backend."""
    _worker.settings, _worker.engine = settings, engine


def _settings() -> Settings:
    if _worker.settings is None:
        raise RuntimeError("the worker's settings were not given (gpu_worker.tasks.use_settings)")
    return _worker.settings


def deliver_callback(job_id: str) -> int:
    """The RQ job that POSTs an ended job to its callback URL (``dicomstl.callbacks``)."""
    return callbacks.deliver(job_id, _settings())


def run_conversion(job_id: str, run: int) -> str:
    """Convert job ``job_id`` for its run number ``run``; returns the state it ended in."""
    settings = _settings()
    job = jobs.start_run(settings, job_id, run)
    if job is None:
        return "stale"  # a newer run owns this job, or it was deleted
    beat = _Heartbeat(settings, job_id, run)
    beat.start()
    start = time.perf_counter()
    state, reason = "retried", "transient"  # unless _convert returns
    try:
        state, reason = _convert(settings, job, beat.cancelled)
        return state
    finally:
        beat.stopped.set()
        outcome = {"uploaded": "choice"}.get(state, state)
        metrics.ended(outcome if outcome in metrics.OUTCOMES else "stale",
                      time.perf_counter() - start, reason)


def _convert(settings: Settings, job, cancelled: threading.Event) -> tuple[str, str | None]:
    """Run the conversion and end the job; (the state it ended in, why it failed)."""
    job_id, run = job.id, job.run
    output = storage.result_path(settings, job_id, result_format(job.options))
    stage_now: list[str] = []
    engine = _worker.engine or resolve_backend(settings.backend)

    def progress(stage: str, state: str) -> None:
        if state == "start" and cancelled.is_set():
            raise jobs.RunCancelled(job_id)
        jobs.record_progress(settings, job_id, run, stage, state)  # RunCancelled too
        stage_now[:] = [stage]
        metrics.observe_memory(engine.memory())

    def stopped() -> tuple[str, None]:
        """The job was deleted (or its run superseded) while it ran: nothing is kept."""
        log.info("job %s is no longer wanted (deleted, or run %d superseded); stopped %s",
                 job_id[:8], run, f"after stage {stage_now[0]}" if stage_now else "at start")
        ended = jobs.finish(settings, job_id, run)  # deletes the files of a deleted job
        return ("deleted" if ended is None or ended.state == "deleted" else "stale"), None

    pipeline_options = to_pipeline(job.options, settings.backend, settings.gpu_memory_budget)
    try:
        if job.options.get("preview"):  # stop after the threshold preview, for a level
            made = threshold_preview.make_preview([storage.upload_dir(settings, job_id)],
                                                  pipeline_options, progress=progress)
            threshold_preview.write(made, storage.make_private_dir(
                storage.preview_dir(settings, job_id)))
            ended = jobs.finish_preview(settings, job_id, run)
            return (ended.state if ended else "deleted"), None
        storage.make_result_dir(settings, job_id)
        result = convert([storage.upload_dir(settings, job_id)], output, pipeline_options,
                         progress=progress, engine=engine, targets=settings.print_targets)
    except jobs.RunCancelled:
        return stopped()
    except Exception:
        # Deleting a running job removes its files at once, which a stage may meet as a
        # missing file: that is the deletion, not a failure.
        if not _still_wanted(settings, job_id, run):
            return stopped()
        return _failed(settings, job, run)
    metrics.observe_result(result.backend, result.timings_s, int(np.prod(result.shape)),
                           result.report.triangles)
    report = result.as_dict()
    report["output"] = output.name
    ended = jobs.finish(settings, job_id, run, report=report, result_bytes=result.bytes_written)
    return (ended.state if ended else "deleted"), None


def _still_wanted(settings: Settings, job_id: str, run: int) -> bool:
    """Whether the run still owns its job; True when that cannot be told (the database is
    what failed): the error is then handled as such."""
    try:
        return jobs.is_current(settings, job_id, run)
    except TRANSIENT:
        return True


def _failed(settings: Settings, job, run: int) -> tuple[str, str | None]:
    """End a run whose conversion raised: called while that exception is being handled,
    which the bare ``raise`` sorts by kind. Returns (state, reason)."""
    job_id = job.id
    try:
        raise
    except SeriesChoiceError as exc:
        if exc.choices and not job.options.get("series"):
            jobs.finish(settings, job_id, run, message=CHOICE_MESSAGE, choices=exc.choices)
            return "uploaded", None
        jobs.finish(settings, job_id, run, message=str(exc))
        return "failed", "input"
    except ConversionError as exc:
        jobs.finish(settings, job_id, run, message=str(exc))
        return "failed", "input"
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            return _transient(settings, job_id, run)
        log.warning("job %s failed: the disk is full", job_id[:8])
        jobs.finish(settings, job_id, run, message=DISK_FULL_MESSAGE)
        return "failed", "internal"
    except JobTimeoutException:
        jobs.finish(settings, job_id, run, message=(
            f"the conversion took longer than the limit of {settings.job_timeout_s // 60} "
            "minutes; try a crop, --downsample or a smaller triangle budget"))
        return "failed", "timeout"
    except TRANSIENT:
        return _transient(settings, job_id, run)
    except Exception:
        log.exception("internal error in job %s", job_id[:8])
        jobs.finish(settings, job_id, run, message=INTERNAL_MESSAGE)
        return "failed", "internal"


def _transient(settings: Settings, job_id: str, run: int) -> tuple[str, str | None]:
    """A transient error (being handled): RQ retries the run (re-raised), or, after its
    retries, the job fails with the generic message."""
    current = get_current_job()
    if current is not None and (current.retries_left or 0) > 0:
        log.warning("job %s hit a transient error; RQ will retry it", job_id[:8],
                    exc_info=True)
        jobs.requeue_after_error(settings, job_id, run)
        raise  # the error being handled
    log.exception("job %s failed after its retries", job_id[:8])
    jobs.finish(settings, job_id, run, message=INTERNAL_MESSAGE)
    return "failed", "transient"


def warm_up(engine: Engine) -> dict:
    """Compile and load everything a job needs once, before the first job, and say which
    engine this worker runs (metrics); timings. The Numba kernels compile once (cached on disk
    after the first time); with a GPU, the CUDA context and kernels load here too."""
    info = engine.warm_up()
    metrics.beat()
    metrics.set_backend(engine.name)
    metrics.observe_memory(engine.memory())
    return {"backend": engine.name, **info}
