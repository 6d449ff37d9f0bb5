"""The worker's metrics: time per stage and per job, voxels and triangles made, failures by
reason, and the engine (GPU memory in use, backend). Served by ``dicomstl worker``.

Failure reasons are a fixed set: ``input`` (the user's data; their message says why),
``timeout``, ``internal`` (a bug) and ``transient`` (a lost connection or a full disk; RQ
retries the job).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from dicomstl.options import STAGES

REASONS = ("input", "timeout", "internal", "transient")
#: How a run ended: ``choice`` waits for the user to pick a series, ``retried`` goes back to
#: RQ after a transient error, ``deleted`` was deleted while it ran, ``stale`` was given up
#: for lost while it ran (a newer run owns the job).
OUTCOMES = ("done", "failed", "choice", "retried", "deleted", "stale")
BACKENDS = ("cpu", "gpu")

STAGE_SECONDS = Histogram(
    "dicomstl_worker_stage_duration_seconds", "Time of each conversion stage",
    ["stage", "backend"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
JOB_SECONDS = Histogram(
    "dicomstl_worker_job_duration_seconds", "Time of one run of a job, by how it ended",
    ["outcome"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
JOBS = Counter("dicomstl_worker_jobs_total", "Runs of jobs, by how they ended", ["outcome"])
FAILURES = Counter("dicomstl_worker_failures_total", "Failed runs, by reason", ["reason"])
VOXELS = Counter("dicomstl_worker_voxels_total", "Voxels of the volumes meshed", ["backend"])
TRIANGLES = Counter("dicomstl_worker_triangles_total", "Triangles of the models written",
                    ["backend"])
GPU_MEMORY_USED = Gauge("dicomstl_worker_gpu_memory_used_bytes",
                        "GPU memory in use on this worker's device (all processes)")
GPU_MEMORY_HELD = Gauge("dicomstl_worker_gpu_memory_held_bytes",
                        "GPU memory this worker's CuPy pool holds")
GPU_MEMORY_TOTAL = Gauge("dicomstl_worker_gpu_memory_total_bytes",
                         "GPU memory of this worker's device")
HEARTBEAT = Gauge("dicomstl_worker_heartbeat_timestamp_seconds",
                  "Unix time of the worker's last sign of life: its RQ loop while it waits, "
                  "its job heartbeat while it converts (`dicomstl health worker` reads it)")
BACKEND = Gauge("dicomstl_worker_backend_info", "The engine this worker runs (1 for it)",
                ["backend"])

for _reason in REASONS:
    FAILURES.labels(_reason)
for _outcome in OUTCOMES:
    JOBS.labels(_outcome)
for _backend in BACKENDS:
    VOXELS.labels(_backend)
    TRIANGLES.labels(_backend)


def beat() -> None:
    """The worker is alive now."""
    HEARTBEAT.set_to_current_time()


def set_backend(backend: str) -> None:
    """The engine this worker runs (``cpu`` or ``gpu``)."""
    for name in BACKENDS:
        BACKEND.labels(name).set(1 if name == backend else 0)


def observe_memory(memory: dict) -> None:
    """The engine's memory now (``Engine.memory``; nothing for the CPU). Read on the thread
    that runs jobs, which owns the GPU context."""
    if not memory:
        return
    GPU_MEMORY_USED.set(memory["device_total_bytes"] - memory["device_free_bytes"])
    GPU_MEMORY_HELD.set(memory["pool_held_bytes"])
    GPU_MEMORY_TOTAL.set(memory["device_total_bytes"])


def observe_result(backend: str, timings_s: dict[str, float], voxels: int,
                   triangles: int) -> None:
    """A finished conversion: its stages' times, voxels and triangles."""
    for stage, seconds in timings_s.items():
        if stage in STAGES:
            STAGE_SECONDS.labels(stage, backend).observe(seconds)
    VOXELS.labels(backend).inc(voxels)
    TRIANGLES.labels(backend).inc(triangles)


def ended(outcome: str, seconds: float, reason: str | None = None) -> None:
    """A run ended: ``outcome`` in OUTCOMES; a failure's ``reason`` in REASONS."""
    JOBS.labels(outcome).inc()
    JOB_SECONDS.labels(outcome).observe(seconds)
    if reason is not None:
        FAILURES.labels(reason).inc()
