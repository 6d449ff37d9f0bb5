"""The RQ job: convert one stored upload, reporting progress and ending in a clear state.

User errors (``ConversionError``) end the job failed with their message. A lost database or
Redis connection or a full disk is transient: the job goes back to ``queued`` and RQ retries
it with backoff. Anything else is a bug: the job fails with a generic message and the log
gets the traceback, which names no patient data (upload files have numbered names). A job
deleted while it runs (or given up for lost) stops before its next stage and writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import OperationalError

from dicomstl import jobs, storage
from dicomstl.errors import ConversionError, SeriesChoiceError
from dicomstl.job_options import to_pipeline
from dicomstl.settings import Settings, current_settings
from gpu_worker import mesh as meshops
from gpu_worker import metrics
from gpu_worker.backend import resolve_backend
from gpu_worker.marching import marching_cubes
from gpu_worker.pipeline import convert
from gpu_worker.stl import binary_stl_bytes

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, RedisError, OSError)
INTERNAL_MESSAGE = ("the conversion failed because of an internal error on our side; it has "
                    "been logged. Please try again later, or contact support with the job id.")
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
            try:
                if not jobs.heartbeat(self.settings, self.job_id, self.run_number):
                    self.cancelled.set()
                    return
            except TRANSIENT:
                log.warning("heartbeat for job %s failed; will try again", self.job_id[:8])


def run_conversion(job_id: str, run: int) -> str:
    """Convert job ``job_id`` for its run number ``run``; returns the state it ended in."""
    settings = current_settings()
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
    fmt = job.options.get("format", "stl")
    output = storage.result_path(settings, job_id, fmt)
    stage_now: list[str] = []

    def progress(stage: str, state: str) -> None:
        if state == "start" and cancelled.is_set():
            raise jobs.RunCancelled(job_id)
        jobs.record_progress(settings, job_id, run, stage, state)  # RunCancelled too
        stage_now[:] = [stage]
        if metrics.current_backend == "gpu":
            metrics.observe_gpu_memory()

    def stopped() -> tuple[str, None]:
        """The job was deleted (or its run superseded) while it ran: nothing is kept."""
        log.info("job %s is no longer wanted (deleted, or run %d superseded); stopped %s",
                 job_id[:8], run, f"after stage {stage_now[0]}" if stage_now else "at start")
        ended = jobs.finish(settings, job_id, run)  # deletes the files of a deleted job
        return ("deleted" if ended is None or ended.state == "deleted" else "stale"), None

    try:
        storage.make_result_dir(settings, job_id)
        result = convert([storage.upload_dir(settings, job_id)], output,
                         to_pipeline(job.options, settings.backend,
                                     settings.gpu_memory_budget), progress=progress)
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
    except JobTimeoutException:
        jobs.finish(settings, job_id, run, message=(
            f"the conversion took longer than the limit of {settings.job_timeout_s // 60} "
            "minutes; try a crop, --downsample or a smaller triangle budget"))
        return "failed", "timeout"
    except TRANSIENT:
        current = get_current_job()
        if current is not None and (current.retries_left or 0) > 0:
            log.warning("job %s hit a transient error; RQ will retry it", job_id[:8],
                        exc_info=True)
            jobs.requeue_after_error(settings, job_id, run)
            raise
        log.exception("job %s failed after its retries", job_id[:8])
        jobs.finish(settings, job_id, run, message=INTERNAL_MESSAGE)
        return "failed", "transient"
    except Exception:
        log.exception("internal error in job %s", job_id[:8])
        jobs.finish(settings, job_id, run, message=INTERNAL_MESSAGE)
        return "failed", "internal"


def warm_up(backend: str = "auto") -> dict:
    """Compile and load everything a job needs once, before the first job; returns timings.

    The Numba kernels (the CPU engine, and mesh checks for both) compile once (cached on
    disk after the first time); with a GPU, the CUDA context and kernels load here too.
    """
    start = time.perf_counter()
    backend = resolve_backend(backend)
    gpu = {}
    if backend == "gpu":
        from gpu_worker import gpu_device

        gpu = gpu_device.warm_up()
    volume = np.zeros((6, 6, 6), np.int16)
    volume[2:4, 2:4, 2:4] = 1000
    index_mesh = marching_cubes(volume, 499.5)
    mesh = meshops.Mesh(index_mesh.vertices.astype(np.float32), index_mesh.faces)
    meshops.report(mesh)
    binary_stl_bytes(mesh)
    metrics.set_backend(backend)
    if backend == "gpu":
        metrics.observe_gpu_memory()
    return {"backend": backend, **gpu, "seconds": round(time.perf_counter() - start, 3)}
