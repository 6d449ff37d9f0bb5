"""The CPU engine (``engines.Engine`` on NumPy, SciPy and the Numba kernels): the reference
that the GPU engine equals bit for bit."""

from __future__ import annotations

import time

import numpy as np

from dicomstl.options import Options
from gpu_worker import decimation, kernel_cache
from gpu_worker import mesh as meshops
from gpu_worker import volume as vol
from gpu_worker.geometry import Geometry
from gpu_worker.marching import marching_cubes
from gpu_worker.stl import binary_stl_bytes


class CpuEngine:
    """NumPy, SciPy and the Numba kernels: the reference engine."""

    name = "cpu"
    xp = np

    def for_volume(self, shape: tuple[int, int, int], options: Options) -> CpuEngine:
        return self

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def smooth(self, volume: vol.Volume, sigma_mm: float) -> vol.Volume:
        return vol.smooth(volume, sigma_mm)

    def keep_parts(self, data, level, keep, min_part_mm3, voxel_mm3,
                   drop_in_plane_border=False):
        return vol.keep_parts(data, level, keep, min_part_mm3, voxel_mm3, drop_in_plane_border)

    def iso_surface(self, data: np.ndarray, level: float, geometry: Geometry) -> meshops.Mesh:
        index_mesh = marching_cubes(data, level)
        vertices = geometry.to_lps_float32(index_mesh.vertices)
        mirrored = not geometry.is_right_handed  # keep normals pointing out
        faces = index_mesh.faces[:, ::-1].copy() if mirrored else index_mesh.faces
        return meshops.Mesh(vertices, faces)

    def check(self, mesh: meshops.Mesh) -> meshops.MeshReport:
        return meshops.report(mesh)

    def pack_stl(self, mesh: meshops.Mesh) -> bytes:
        return binary_stl_bytes(mesh)

    def memory(self) -> dict:
        return {}

    def fallback(self, exc: Exception) -> None:
        return None

    def warm_up(self) -> dict:
        """Load the Numba kernels from the disk cache (compile them, the first time after an
        install) by running each on a tiny volume, for both volume types a conversion meets
        (int16 HU, float32 after smoothing or rescaling): marching cubes, the mesh checks
        (which the GPU engine uses too), STL packing and decimation. Seconds, and how many
        kernels were compiled and how many loaded."""
        start = time.perf_counter()
        for dtype in (np.int16, np.float32):
            volume = np.zeros((6, 6, 6), dtype)
            volume[2:4, 2:4, 2:4] = 1000
            index_mesh = marching_cubes(volume, 499.5)
            mesh = meshops.Mesh(index_mesh.vertices.astype(np.float32), index_mesh.faces)
            meshops.report(mesh)
            binary_stl_bytes(mesh)
        decimation.warm_up()
        return {"seconds": round(time.perf_counter() - start, 3),
                "kernels": kernel_cache.counts()}
