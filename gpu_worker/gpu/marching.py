"""Marching cubes on the GPU (CuPy + ``kernels/marching.cu``), equal to
:mod:`gpu_worker.marching`.

Same topology, same order, same float32 bits: vertices one per cut edge in the CPU's
canonical order (padded row, column, axis), triangles by cube then table order. Optionally the
vertices are mapped to patient LPS millimetres inside the kernel (float64 arithmetic, then
float32, exactly as :meth:`gpu_worker.geometry.Geometry.to_lps` rounds).

Passes: ``mc_count`` (cut edges and triangles per padded row) -> two prefix sums over rows
(CuPy's CUB scan; about 0.26 M rows at 512^3) -> ``mc_emit``. The one host synchronisation
reads the two totals to size the output.

Slabs: a volume that does not fit the GPU's memory budget runs slab by slab along the slice
axis. Row (a, b) of the padded grid needs slices a-1 and a to be counted and slices a-1 .. a+1
to be emitted (a triangle of the slab's top cube row names the vertices of the next row, whose
number depends on that row's z-edges), so counting slabs overlap by one slice and emitting
slabs by two. Every slab is counted first; the global prefix sums then give each slab's
output offsets, and the slabs' outputs are the whole-volume run's, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpu_worker.gpu import kernels

SUPPORTED_DTYPES = (np.dtype(np.int16), np.dtype(np.float32))
_CTYPE = {np.dtype(np.int16): "short", np.dtype(np.float32): "float"}


@dataclass(frozen=True)
class Slab:
    """Padded row planes ``rows`` = [a0, a1) and the slices each pass reads ([k0, k1))."""

    rows: tuple[int, int]
    count_slices: tuple[int, int]
    emit_slices: tuple[int, int]

    def grid_rows(self, rows_per_plane: int) -> tuple[int, int]:
        """(first padded row, number of rows) of the slab: one thread block each."""
        return self.rows[0] * rows_per_plane, (self.rows[1] - self.rows[0]) * rows_per_plane


def plan_slabs(n_slices: int, slab_slices: int | None) -> list[Slab]:
    """Split the ``n_slices + 1`` padded row planes into slabs of ``slab_slices`` planes.

    ``None`` (or a slab at least as tall as the volume) gives one slab for the whole volume.
    """
    planes = n_slices + 1
    step = planes if slab_slices is None else max(1, int(slab_slices))
    slabs = []
    for a0 in range(0, planes, step):
        a1 = min(a0 + step, planes)
        lo = max(a0 - 1, 0)
        slabs.append(Slab((a0, a1), (lo, min(a1 - 1, n_slices - 1) + 1),
                          (lo, min(a1, n_slices - 1) + 1)))
    return slabs


def slab_slices_for(shape: tuple[int, int, int], itemsize: int, budget_bytes: int) -> int | None:
    """Slab height (row planes) whose slices fit ``budget_bytes``; None when all of it fits."""
    nk, nj, ni = shape
    slice_bytes = nj * ni * itemsize
    if (nk + 2) * slice_bytes <= budget_bytes:
        return None
    return max(1, budget_bytes // slice_bytes - 2)


def transform_arrays(geometry) -> tuple[np.ndarray, np.ndarray]:
    """(xf, origins) for the kernel: row step, column step and slice normal (9 float64, mm),
    and the (K, 3) float64 slice origins, the same numbers Geometry.to_lps uses."""
    xf = np.concatenate([geometry.row_dir * geometry.spacing_ij[0],
                         geometry.col_dir * geometry.spacing_ij[1],
                         geometry.normal]).astype(np.float64)
    return xf, np.ascontiguousarray(geometry.origins, dtype=np.float64)


def marching_cubes_gpu(volume, level: float, geometry=None, flip: bool = False,
                       slab_slices: int | None = None):
    """The closed surface ``volume >= level`` as CuPy arrays (vertices, faces).

    volume : (K, J, I) int16 or float32, a CuPy array or a NumPy array (uploaded slab by
        slab), indexed [slice, row, column].
    level : compared exactly as given (use :func:`gpu_worker.marching.effective_level`).
    geometry : a :class:`gpu_worker.geometry.Geometry` to get vertices in LPS mm; None keeps
        voxel-index coordinates (column, row, slice), as :func:`marching_cubes` returns.
    flip : reverse each triangle's winding (the index frame is mirrored in LPS).
    slab_slices : process this many row planes at a time (None: the whole volume).

    Returns (vertices float32 (V, 3), faces int32 (F, 3)) on the GPU.
    """
    import cupy

    if volume.ndim != 3:
        raise ValueError(f"marching_cubes_gpu needs a 3-D volume, got shape {volume.shape}")
    dtype = np.dtype(volume.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the GPU marching cubes takes int16 or float32, not {dtype}")
    nk, nj, ni = (int(n) for n in volume.shape)
    ctype = _CTYPE[dtype]
    count, emit = kernels.kernel(f"mc_count<{ctype}>"), kernels.kernel(f"mc_emit<{ctype}>")
    rows_per_plane = nj + 1
    n_rows = (nk + 1) * rows_per_plane
    vcnt = cupy.zeros(n_rows, dtype=cupy.int32)
    tcnt = cupy.zeros(n_rows, dtype=cupy.int32)
    slabs = plan_slabs(nk, slab_slices)
    dims = (np.int32(nk), np.int32(nj), np.int32(ni))
    level_arg = np.float64(level)

    def slices(lo: int, hi: int):
        return cupy.ascontiguousarray(cupy.asarray(volume[lo:hi]))

    if len(slabs) == 1:
        volume = cupy.asarray(volume)  # upload once for both passes
    for slab in slabs:
        data = slices(*slab.count_slices)
        row0, rows = slab.grid_rows(rows_per_plane)
        count((rows,), (kernels.MC_BLOCK,),
              (data, *dims, np.int32(slab.count_slices[0]), level_arg, np.int32(row0), vcnt,
               tcnt))
    voff = cupy.zeros(n_rows + 1, dtype=cupy.int64)
    toff = cupy.zeros(n_rows + 1, dtype=cupy.int64)
    cupy.cumsum(vcnt, out=voff[1:])
    cupy.cumsum(tcnt, out=toff[1:])
    n_verts, n_tris = (int(x) for x in cupy.stack([voff[-1], toff[-1]]).get())
    if max(n_verts, 3 * n_tris) >= 2**31:
        raise ValueError("surface too large for 32-bit indices; downsample or crop")
    verts = cupy.empty((n_verts, 3), dtype=cupy.float32)
    faces = cupy.empty((n_tris, 3), dtype=cupy.int32)
    if n_tris == 0:
        return verts, faces
    if geometry is None:
        xf, origins, n_origins = cupy.zeros(9, cupy.float64), cupy.zeros(3, cupy.float64), 0
    else:
        xf_h, origins_h = transform_arrays(geometry)
        xf, origins, n_origins = cupy.asarray(xf_h), cupy.asarray(origins_h), len(origins_h)
    for slab in slabs:
        data = slices(*slab.emit_slices)
        row0, rows = slab.grid_rows(rows_per_plane)
        emit((rows,), (kernels.MC_BLOCK,),
             (data, *dims, np.int32(slab.emit_slices[0]), level_arg, np.int32(row0), vcnt, tcnt,
              voff, toff, xf, origins, np.int32(n_origins), np.int32(bool(flip)), verts,
              faces))
    return verts, faces
