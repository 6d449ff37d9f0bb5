"""The worker's GPU metrics read the device: backend ``gpu`` and its memory in bytes."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gpu_worker.engines import resolve_backend
from gpu_worker.tasks import warm_up


def _value(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_warm_up_reports_the_gpu_backend_and_its_memory(cupy):
    assert warm_up(resolve_backend("auto"))["backend"] == "gpu"
    assert _value("dicomstl_worker_backend_info", backend="gpu") == 1
    assert _value("dicomstl_worker_backend_info", backend="cpu") == 0
    total = cupy.cuda.Device().mem_info[1]
    assert _value("dicomstl_worker_gpu_memory_total_bytes") == total
    used = _value("dicomstl_worker_gpu_memory_used_bytes")
    assert 0 < used <= total
    held = cupy.get_default_memory_pool().total_bytes()
    assert _value("dicomstl_worker_gpu_memory_held_bytes") == held
