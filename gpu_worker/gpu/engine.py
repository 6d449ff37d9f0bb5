"""The GPU engine (``engines.Engine`` on CuPy): every array stage on the device when the
volume fits the memory budget; else smoothing and islands on the CPU and marching cubes on
the GPU slab by slab. Its results equal the CPU engine's bit for bit.

With no decimation or mesh smoothing to come, a binary STL is packed on the GPU right after
the surface (``pack_stl`` then returns those bytes for that mesh).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from dicomstl.options import Options
from gpu_worker import mesh as meshops
from gpu_worker import volume as vol
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.decode import DecodedSeries
from gpu_worker.geometry import Geometry
from gpu_worker.gpu import device, kernels
from gpu_worker.gpu import volume as gpu_volume
from gpu_worker.gpu.marching import marching_cubes_gpu, slab_slices_for
from gpu_worker.gpu.stl import binary_stl_bytes_gpu
from gpu_worker.stl import binary_stl_bytes

log = logging.getLogger(__name__)


class GpuEngine:
    """The GPU engine; ``for_volume`` gives the one for a conversion (``budget`` bytes of GPU
    memory; ``whole``: every stage on the GPU; ``packs_stl``: pack the surface's STL there)."""

    name = "gpu"

    def __init__(self, budget: int = 0, whole: bool = True, packs_stl: bool = False):
        self.budget, self.whole, self.packs_stl = budget, whole, packs_stl
        self._surface: meshops.Mesh | None = None
        self._packed = None

    def for_volume(self, shape: tuple[int, int, int], options: Options) -> GpuEngine:
        budget = device.memory_budget(options.gpu_memory_budget)
        whole = device.fits(shape, budget)
        if not whole:
            log.info("the volume (%s voxels) exceeds the GPU memory budget (%d MB): smoothing "
                     "and islands run on the CPU, marching cubes in slabs", "x".join(
                         str(n) for n in shape), budget // 2**20)
        packs_stl = (options.format == "stl" and not options.decimate
                     and options.max_triangles is None and options.mesh_smooth == 0)
        return GpuEngine(budget, whole, packs_stl)

    @property
    def xp(self):
        if not self.whole:
            return np
        import cupy

        return cupy

    def to_device(self, array):
        return device.upload(array) if self.whole else array

    def to_host(self, array) -> np.ndarray:
        return device.to_host(array)

    def smooth(self, volume: vol.Volume, sigma_mm: float) -> vol.Volume:
        return (gpu_volume.smooth if self.whole else vol.smooth)(volume, sigma_mm)

    def keep_parts(self, data, level, keep, min_part_mm3, voxel_mm3,
                   drop_in_plane_border=False):
        return (gpu_volume.keep_parts if self.whole else vol.keep_parts)(
            data, level, keep, min_part_mm3, voxel_mm3, drop_in_plane_border)

    def iso_surface(self, data, level: float, geometry: Geometry) -> meshops.Mesh:
        slabs = None if self.whole else slab_slices_for(data.shape, data.dtype.itemsize,
                                                        self.budget)
        verts, faces = marching_cubes_gpu(data, level, geometry,
                                          flip=not geometry.is_right_handed, slab_slices=slabs)
        self._packed = binary_stl_bytes_gpu(verts, faces) if self.packs_stl else None
        self._surface = meshops.Mesh(verts.get(), faces.get())
        return self._surface

    def check(self, mesh: meshops.Mesh) -> meshops.MeshReport:
        return meshops.report(mesh)

    def pack_stl(self, mesh: meshops.Mesh):
        if mesh is self._surface and self._packed is not None:
            return self._packed
        return binary_stl_bytes(mesh)

    def memory(self) -> dict:
        return device.memory_in_use()

    def fallback(self, exc: Exception) -> CpuEngine | None:
        """The CPU engine after the GPU ran out of memory (a volume the budget let through
        can still meet a GPU that other work filled)."""
        if not device.is_out_of_memory(exc):
            return None
        log.warning("the GPU ran out of memory; converting on the CPU instead")
        device.release_memory()
        return CpuEngine()

    def warm_up(self) -> dict:
        """The CPU engine's warm-up (the mesh checks run there), then create the CUDA context,
        compile or load the kernels (ours and the CuPy ones the stages use: rescale, labels,
        bincount) and run each once; timings and the device's name. Without it the first job
        pays about a second of compilation."""
        start = time.perf_counter()
        cpu = CpuEngine().warm_up()
        kernels.module()
        data = np.full((8, 8, 8), -1000, np.int16)
        data[2:5, 2:5, 2:5] = 1000
        data[6, 6, 6] = 1000
        geometry = Geometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.0, 1.0),
                            np.array([[0.0, 0.0, float(k)] for k in range(8)]))
        decoded = DecodedSeries(device.upload(data), np.ones(8), np.zeros(8), geometry, "CT",
                                "", [])
        import cupy

        volume = vol.to_volume(decoded, cupy)
        smoothed = gpu_volume.smooth(volume, 0.5).data
        for field in (volume.data, smoothed):  # int16 and float32 kernels
            kept, _ = gpu_volume.keep_parts(field, 299.5, "largest", 0.0, 1.0, True)
            verts, faces = marching_cubes_gpu(kept, 299.5, geometry)
            binary_stl_bytes_gpu(verts, faces)
        return {"device": device.device_name(),
                "seconds": round(time.perf_counter() - start, 3), "kernels": cpu["kernels"]}
