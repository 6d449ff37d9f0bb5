"""CUDA kernels (``*.cu`` beside this file, one file per family), compiled once per process
through CuPy.

- ``marching.cu``: marching cubes (``mc_count``, ``mc_emit``; tables in ``mc_tables.cuh``);
- ``stl.cu``: binary STL records (``stl_pack``);
- ``labels.cu``: the first voxel of each island label (``label_first``);
- ``gauss.cu``: one Gaussian smoothing pass along an axis (``gauss_axis``).

``module()`` compiles the files together with NVRTC into one module on first use (one
compilation, as a worker's warm-up wants) and keeps it; CuPy also caches the binary on disk
(``CUPY_CACHE_DIR``), so a new worker process loads it without compiling. Each file also
compiles on its own with ``nvcc`` (``make kernels``, in CI). ``--fmad=false`` keeps every
multiply and add separately rounded, as on the CPU, so vertex positions and smoothed values
match the CPU reference bit for bit.
"""

from __future__ import annotations

import functools
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
#: The sources of the one module, in order.
SOURCES = ("marching.cu", "stl.cu", "labels.cu", "gauss.cu")
#: Options for NVRTC (CuPy) and nvcc (CI's compile check) alike.
COMPILE_OPTIONS = ("-std=c++17", "--fmad=false")
#: Template instances CuPy must name; nvcc instantiates them explicitly in marching.cu.
TEMPLATES = tuple(f"{kernel}<{ctype}>" for kernel in ("mc_count", "mc_emit")
                  for ctype in ("short", "float"))
#: Threads per block of the marching-cubes kernels (MC_BLOCK in marching.cu).
MC_BLOCK = 128
#: Threads per block of the one-thread-per-element kernels.
THREADS = 256


def blocks(n: int) -> tuple[int]:
    """Grid size for one thread per element of ``n`` (blocks of :data:`THREADS`)."""
    return ((n + THREADS - 1) // THREADS,)


def module_source() -> str:
    """The text NVRTC compiles: every source file, in ``SOURCES`` order."""
    return "\n".join((KERNEL_DIR / name).read_text() for name in SOURCES)


@functools.cache
def module():
    """The compiled kernels (a ``cupy.RawModule``); compiled once per process."""
    import cupy

    mod = cupy.RawModule(code=module_source(), options=(*COMPILE_OPTIONS, f"-I{KERNEL_DIR}"),
                         name_expressions=TEMPLATES)
    mod.compile()
    return mod


def kernel(name: str):
    """A kernel by name, e.g. ``"mc_count<short>"`` or ``"stl_pack"``."""
    return module().get_function(name)
