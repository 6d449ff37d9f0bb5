"""The GPU as the engine sees it: is one usable, how much memory a job may use and uses,
moving arrays to and from it.

A worker process keeps one CUDA context, CuPy's memory pool and the compiled kernels for its
whole life; ``GpuEngine.warm_up`` loads them before the first job.
"""

from __future__ import annotations

import numpy as np

from gpu_worker.gpu import kernels

#: Bytes per voxel the GPU stages hold at their peak: the stored volume (up to 4 B), the two
#: float32 smoothing buffers, the mask (1 B), int32 labels and CuPy temporaries.
BYTES_PER_VOXEL = 16
#: Fraction of the free device memory a job may use when no budget is set.
DEFAULT_BUDGET_FRACTION = 0.8


def status() -> tuple[bool, str]:
    """(usable, why or which device): CuPy, a CUDA device, and kernels that compile."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install '.[gpu]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return False, "CuPy found no CUDA device"
        kernels.module()
    except Exception as exc:  # no driver, no device, NVRTC missing: all mean "use the CPU"
        return False, f"the GPU cannot be used ({type(exc).__name__}: {exc})"
    return True, device_name()


def device_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def memory_budget(requested: int = 0) -> int:
    """Bytes one job may use on the GPU: ``requested`` (``Options.gpu_memory_budget``), or
    when that is 0, 80% of what is free now (CuPy's cached blocks count as free)."""
    import cupy

    if requested > 0:
        return requested
    free, _total = cupy.cuda.Device().mem_info
    pool = cupy.get_default_memory_pool()
    return int(DEFAULT_BUDGET_FRACTION * (free + pool.free_bytes()))


def fits(shape: tuple[int, ...], budget: int) -> bool:
    """Whether a volume of ``shape`` voxels can go through every GPU stage within ``budget``
    bytes."""
    return int(np.prod(shape)) * BYTES_PER_VOXEL <= budget


def memory_in_use() -> dict:
    """GPU memory for metrics: CuPy's pool (used, held) and the device (free, total), bytes."""
    import cupy

    pool = cupy.get_default_memory_pool()
    free, total = cupy.cuda.Device().mem_info
    return {"pool_used_bytes": int(pool.used_bytes()), "pool_held_bytes": int(pool.total_bytes()),
            "device_free_bytes": int(free), "device_total_bytes": int(total)}


def upload(array):
    """A host array on the GPU (through a pinned staging buffer: about twice as fast as from
    pageable memory); a CuPy array is returned as it is."""
    import cupy
    import cupyx

    if isinstance(array, cupy.ndarray):
        return array
    staged = cupyx.empty_like_pinned(array)
    staged[...] = array
    return cupy.asarray(staged)


def release_memory() -> None:
    """Give CuPy's cached GPU memory back to the device (after an out-of-memory error)."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def to_host(array) -> np.ndarray:
    """A NumPy copy of a CuPy array (NumPy arrays pass through)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CuPy's out-of-memory error (the device or its pool ran out)."""
    import cupy

    return isinstance(exc, cupy.cuda.memory.OutOfMemoryError)
