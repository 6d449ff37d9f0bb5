"""GPU tests: every test here is marked ``gpu`` and skips, with the reason, without a device."""

from __future__ import annotations

import pytest

from gpu_worker.engines import gpu_status


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def cupy():
    """The cupy module, when CuPy finds a device and the kernels compile; else skip."""
    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
    import cupy

    return cupy
