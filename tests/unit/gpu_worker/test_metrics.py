"""The worker's metrics on the CPU engine: backend, and a finished conversion's numbers."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gpu_worker import metrics
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.tasks import warm_up


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_cpu_worker_reports_its_backend_and_no_gpu_memory():
    assert warm_up(CpuEngine())["backend"] == "cpu"
    assert _value("dicomstl_worker_backend_info", backend="cpu") == 1
    assert _value("dicomstl_worker_backend_info", backend="gpu") == 0
    assert _value("dicomstl_worker_gpu_memory_used_bytes") == 0


def test_a_result_counts_stages_voxels_and_triangles():
    before = {name: _value(name, backend="cpu") for name in (
        "dicomstl_worker_voxels_total", "dicomstl_worker_triangles_total")}
    surface = _value("dicomstl_worker_stage_duration_seconds_count", stage="surface",
                     backend="cpu")
    metrics.observe_result("cpu", {"surface": 0.2, "write": 0.01, "not-a-stage": 1.0},
                           voxels=512 * 512 * 140, triangles=1_500_000)
    assert _value("dicomstl_worker_voxels_total", backend="cpu") - before[
        "dicomstl_worker_voxels_total"] == 512 * 512 * 140
    assert _value("dicomstl_worker_triangles_total", backend="cpu") - before[
        "dicomstl_worker_triangles_total"] == 1_500_000
    assert _value("dicomstl_worker_stage_duration_seconds_count", stage="surface",
                  backend="cpu") == surface + 1
    assert REGISTRY.get_sample_value("dicomstl_worker_stage_duration_seconds_count",
                                     {"stage": "not-a-stage", "backend": "cpu"}) is None
