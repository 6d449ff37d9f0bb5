"""The one switch between the GPU (CuPy) and CPU (NumPy/Numba) engines."""

from __future__ import annotations

import logging

from dicomstl.errors import ConversionError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "cpu", "gpu")


def gpu_status() -> tuple[bool, str]:
    """Whether the GPU engine can run here, and if not, why (for logs and errors)."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install '.[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return False, "CuPy found no CUDA device"
    if count == 0:
        return False, "CuPy found no CUDA device"
    return False, "this version has no GPU engine yet; the CPU engine gives the same result"


def resolve_backend(name: str) -> str:
    """'cpu' or 'gpu' for a requested backend; 'auto' falls back to the CPU with a log line."""
    if name not in BACKENDS:
        raise ConversionError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cpu":
        return "cpu"
    ok, why = gpu_status()
    if ok:
        return "gpu"
    if name == "gpu":
        raise ConversionError(f"--backend gpu is not available: {why}")
    log.info("using the CPU backend: %s", why)
    return "cpu"
