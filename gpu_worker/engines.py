"""The one switch between the engines: an ``Engine`` runs the array stages of a conversion,
and ``resolve_backend`` picks one (the GPU through CuPy where it can be used, else the CPU).

Both engines give the same results bit for bit, so the pipeline asks only *what* to do, never
*where*: the CPU engine (NumPy, SciPy, Numba) is the reference and the GPU's test oracle.

An engine is asked for the engine of one conversion (``for_volume``): the GPU engine answers
with itself when the volume fits its memory budget, or with one that smooths and labels on the
CPU and runs marching cubes on the GPU slab by slab.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from dicomstl.errors import ConversionError
from dicomstl.options import BACKENDS, Options
from gpu_worker import mesh as meshops
from gpu_worker import volume as vol
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.geometry import Geometry

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Where a conversion's arrays live and its array stages run. Volumes are indexed
    [slice, row, column]; meshes are float32 LPS millimetres on the host."""

    name: str  # "cpu" or "gpu": in reports and metrics
    xp: Any  # the array module of the volume stages: numpy or cupy

    def for_volume(self, shape: tuple[int, int, int], options: Options) -> Engine:
        """The engine for one conversion of a volume of ``shape`` voxels."""

    def to_device(self, array: np.ndarray) -> Any:
        """``array`` where this engine's stages read it."""

    def to_host(self, array: Any) -> np.ndarray:
        """A NumPy array of one of this engine's arrays."""

    def smooth(self, volume: vol.Volume, sigma_mm: float) -> vol.Volume:
        """Gaussian smoothing, σ in mm (``volume.smooth``)."""

    def keep_parts(self, data: Any, level: float, keep: str, min_part_mm3: float,
                   voxel_mm3: float, drop_in_plane_border: bool = False
                   ) -> tuple[Any, vol.PartsReport]:
        """Island removal (``volume.keep_parts``)."""

    def iso_surface(self, data: Any, level: float, geometry: Geometry) -> meshops.Mesh:
        """The closed surface ``data >= level`` in LPS mm, outward normals (the winding is
        flipped where the index frame is mirrored)."""

    def check(self, mesh: meshops.Mesh) -> meshops.MeshReport:
        """The mesh report: closed, 2-manifold, area, volume, parts."""

    def pack_stl(self, mesh: meshops.Mesh) -> Any:
        """The binary STL bytes of ``mesh``."""

    def memory(self) -> dict:
        """The engine's memory in use, for metrics (empty for the CPU)."""

    def fallback(self, exc: Exception) -> Engine | None:
        """The engine to convert on after ``exc``, or None when it is not the engine's to
        handle (the GPU ran out of memory: the CPU)."""

    def warm_up(self) -> dict:
        """Compile and load what a conversion needs, before the first; timings."""


def gpu_status() -> tuple[bool, str]:
    """Whether the GPU engine can run here, and which device or why not (for logs, errors)."""
    from gpu_worker.gpu import device

    return device.status()


def resolve_backend(name: str) -> Engine:
    """The engine for a requested backend (``BACKENDS``); ``auto`` falls back to the CPU with a
    log line saying why, ``gpu`` without a usable GPU is an error."""
    if name not in BACKENDS:
        raise ConversionError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cpu":
        return CpuEngine()
    ok, why = gpu_status()
    if ok:
        log.info("using the GPU backend: %s", why)
        from gpu_worker.gpu.engine import GpuEngine

        return GpuEngine()
    if name == "gpu":
        raise ConversionError(f"--backend gpu is not available: {why}")
    log.info("using the CPU backend: %s", why)
    return CpuEngine()
