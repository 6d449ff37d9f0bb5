"""Marching cubes: the reference iso-surface extractor (CPU, Numba).

This is the topology every backend must reproduce, array for array:

* **Inside** means ``value >= level``. Samples outside the volume count as outside, so the
  surface is closed at the volume border: there the vertex sits ``T_EPS`` of a voxel away from
  the border voxel's centre, towards the outside.
* **Vertices** are shared: one per cut grid edge. An edge belongs to the voxel at its lower end
  (its *owner*); vertices are ordered by edge id = (slice, row, column, axis) of the owner in a
  grid padded by one voxel on each side, axis x < y < z. This order is canonical.
* **Triangles** come from the classic 256-case table (:mod:`gpu_worker.mc_tables`), ordered by
  cube (slice, row, column) and then by table order, wound counter-clockwise seen from outside
  in voxel-index space (i = column, j = row, k = slice).
* **Positions** are linear interpolation along the edge, clamped to ``[T_EPS, 1 - T_EPS]`` so
  that no vertex lands on a grid point: two vertices never coincide even when the level equals
  voxel values, and the mesh stays 2-manifold after a slicer merges vertices by position.

Coordinates returned here are voxel indices (x = column i, y = row j, z = slice k);
:mod:`gpu_worker.geometry` maps them to patient LPS millimetres.

The kernels walk rows of the padded grid in the manner of Flying Edges (Schroeder et al., 2015):
a first pass counts vertices and triangles per row, a prefix sum gives each row its output
offsets, and a second pass writes them. Rows are trimmed to the span where the inside mask
changes, so empty space costs one comparison per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from gpu_worker.mc_tables import CORNER_OFFSETS, EDGE_CORNERS, TRIANGLES

#: Fraction of a voxel that keeps every vertex off the grid points.
T_EPS = 1.0 / 256.0


def _build_tables() -> dict[str, np.ndarray]:
    """Flatten the classic table into arrays the kernels index directly."""
    tri = np.full((256, 16), -1, dtype=np.int8)
    ntri = np.zeros(256, dtype=np.int8)
    for case, edges in enumerate(TRIANGLES):
        tri[case, : len(edges)] = edges
        ntri[case] = len(edges) // 3
    # For each edge: which of the cube's four owner rows owns it (dz * 2 + dy), whether the
    # owner is the cube's first (0) or second (1) voxel along x, and the edge's axis.
    edge_row = np.zeros(12, dtype=np.int8)
    edge_dx = np.zeros(12, dtype=np.int8)
    edge_axis = np.zeros(12, dtype=np.int8)
    for e, (c0, c1) in enumerate(EDGE_CORNERS):
        p0, p1 = np.array(CORNER_OFFSETS[c0]), np.array(CORNER_OFFSETS[c1])
        owner = np.minimum(p0, p1)
        edge_axis[e] = int(np.argmax(np.abs(p1 - p0)))
        edge_dx[e] = owner[0]
        edge_row[e] = owner[2] * 2 + owner[1]
    return {"tri": tri, "ntri": ntri, "edge_row": edge_row, "edge_dx": edge_dx,
            "edge_axis": edge_axis}


# OpenMP or Numba's own work queue; an old system TBB would only print a warning.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
TABLES = _build_tables()
_POPCOUNT3 = np.array([0, 1, 1, 2, 1, 2, 2, 3], dtype=np.int64)


@dataclass(frozen=True)
class IndexMesh:
    """A triangle mesh in voxel-index coordinates.

    ``vertices``: float32 (V, 3), columns (i, j, k) = (column, row, slice) in voxels.
    ``faces``: int32 (F, 3), indices into ``vertices``, counter-clockwise seen from outside.
    """

    vertices: np.ndarray
    faces: np.ndarray


@numba.njit(parallel=True, cache=True, nogil=True)
def _inside_mask(vol, level, mask, first, last):  # pragma: no cover - compiled
    """mask[a, b, c] = vol[a-1, b-1, c-1] >= level; first/last: span of ones per mask row."""
    nk, nj, ni = vol.shape
    for a in numba.prange(nk):
        for b in range(nj):
            hi = -1
            for c in range(ni):
                if vol[a, b, c] >= level:
                    mask[a + 1, b + 1, c + 1] = 1
                    if hi < 0:
                        first[a + 1, b + 1] = c + 1
                    hi = c + 1
            last[a + 1, b + 1] = hi


def _column_tables(ntri: np.ndarray) -> dict[str, np.ndarray]:
    """Lookups indexed by two column codes (q0 << 4 | q1).

    A cube row (a, b) sees four mask rows; column code q(c) packs their values at column c:
    bit 0 = (a, b), bit 1 = (a, b+1), bit 2 = (a+1, b), bit 3 = (a+1, b+1). Two neighbouring
    codes fix the cube's case and the edges owned by voxel (a, b, c).
    """
    case = np.zeros(256, dtype=np.uint8)
    bits = np.zeros(256, dtype=np.uint8)
    for q0 in range(16):
        for q1 in range(16):
            b = [(q0 >> n) & 1 for n in range(4)]
            n = [(q1 >> m) & 1 for m in range(4)]
            inside = (b[0] | n[0] << 1 | n[1] << 2 | b[1] << 3 | b[2] << 4 | n[2] << 5
                      | n[3] << 6 | b[3] << 7)
            case[q0 << 4 | q1] = 255 ^ inside
            bits[q0 << 4 | q1] = (b[0] != n[0]) | (b[0] != b[1]) << 1 | (b[0] != b[2]) << 2
    return {"case": case, "ntri": ntri[case].astype(np.uint8), "bits": bits}


TABLES.update({f"col_{k}": v for k, v in _column_tables(TABLES["ntri"]).items()})


@numba.njit(inline="always")
def _span(first, last, a, b):  # pragma: no cover - compiled
    """Union of the spans of mask rows (a, b), (a, b+1), (a+1, b), (a+1, b+1)."""
    lo = min(min(first[a, b], first[a, b + 1]), min(first[a + 1, b], first[a + 1, b + 1]))
    hi = max(max(last[a, b], last[a, b + 1]), max(last[a + 1, b], last[a + 1, b + 1]))
    return lo, hi


@numba.njit(inline="always")
def _code(mask, a, b, c):  # pragma: no cover - compiled
    return (mask[a, b, c] | (mask[a, b + 1, c] << 1) | (mask[a + 1, b, c] << 2)
            | (mask[a + 1, b + 1, c] << 3))


@numba.njit(parallel=True, cache=True, nogil=True)
def _count(mask, first, last, lut_ntri, lut_bits, edges, efirst, elast, nvert_row,
           ntri_row):  # pragma: no cover - compiled
    """Per padded row (a, b): cut edges it owns (stored in ``edges``, bits x=1, y=2, z=4,
    with their span in efirst/elast) and triangles of the cubes it starts."""
    na, nb = nvert_row.shape
    ni = mask.shape[2] - 2
    for a in numba.prange(na):
        for b in range(nb):
            lo, hi = _span(first, last, a, b)
            if hi < 0:
                continue
            c0 = max(lo - 1, 0)
            q0 = _code(mask, a, b, c0)
            nv = 0
            nt = 0
            for c in range(c0, min(hi, ni) + 1):
                q1 = _code(mask, a, b, c + 1)
                key = (q0 << 4) | q1
                bits = lut_bits[key]
                if bits:
                    edges[a, b, c] = bits
                    nv += _POPCOUNT3[bits]
                    if efirst[a, b] > c:
                        efirst[a, b] = c
                    elast[a, b] = c
                nt += lut_ntri[key]
                q0 = q1
            nvert_row[a, b] = nv
            ntri_row[a, b] = nt


@numba.njit(inline="always")
def _edge_t(v0, v1, level, owner_inside_volume, other_inside_volume):  # pragma: no cover
    if not owner_inside_volume:
        return 1.0 - T_EPS
    if not other_inside_volume:
        return T_EPS
    t = (level - v0) / (v1 - v0)
    return min(max(t, T_EPS), 1.0 - T_EPS)


@numba.njit(parallel=True, cache=True, nogil=True)
def _generate(vol, level, mask, edges, efirst, elast, lut_case, tri, ntri, edge_row, edge_dx,
              edge_axis, vert_base, tri_base, ntri_row, verts, faces):  # pragma: no cover
    na, nb = vert_base.shape
    nk, nj, ni = vol.shape
    for a in numba.prange(na):
        row_base = np.empty(4, dtype=np.int64)
        count = np.empty(4, dtype=np.int64)
        bits0 = np.empty(4, dtype=np.int64)
        bits1 = np.empty(4, dtype=np.int64)
        k = a - 1
        for b in range(nb):
            j = b - 1
            # Vertices of the edges owned by row (a, b).
            out = vert_base[a, b]
            for c in range(efirst[a, b], elast[a, b] + 1):
                bits = edges[a, b, c]
                if bits == 0:
                    continue
                i = c - 1
                own = 0 <= k < nk and 0 <= j < nj and 0 <= i < ni
                v0 = vol[k, j, i] if own else 0.0
                if bits & 1:
                    ok = i + 1 < ni
                    t = _edge_t(v0, vol[k, j, i + 1] if ok and own else 0.0, level, own, ok)
                    verts[out, 0] = i + t
                    verts[out, 1] = j
                    verts[out, 2] = k
                    out += 1
                if bits & 2:
                    ok = j + 1 < nj
                    t = _edge_t(v0, vol[k, j + 1, i] if ok and own else 0.0, level, own, ok)
                    verts[out, 0] = i
                    verts[out, 1] = j + t
                    verts[out, 2] = k
                    out += 1
                if bits & 4:
                    ok = k + 1 < nk
                    t = _edge_t(v0, vol[k + 1, j, i] if ok and own else 0.0, level, own, ok)
                    verts[out, 0] = i
                    verts[out, 1] = j
                    verts[out, 2] = k + t
                    out += 1
            # Triangles of the cubes whose first corner is in row (a, b). Their edges belong to
            # owner rows (a, b), (a, b+1), (a+1, b), (a+1, b+1); a running count per row gives
            # each owner's first vertex index.
            if ntri_row[a, b] == 0:
                continue
            lo, hi = _span(efirst, elast, a, b)
            c0 = max(lo - 1, 0)
            for r in range(4):
                ra = a + (r >> 1)
                rb = b + (r & 1)
                row_base[r] = vert_base[ra, rb] if ra < na and rb < nb else 0
                count[r] = 0
                bits0[r] = edges[ra, rb, c0]
            out = tri_base[a, b]
            q0 = _code(mask, a, b, c0)
            for c in range(c0, min(hi, ni) + 1):
                q1 = _code(mask, a, b, c + 1)
                for r in range(4):
                    bits1[r] = edges[a + (r >> 1), b + (r & 1), c + 1]
                case = lut_case[(q0 << 4) | q1]
                n = ntri[case]
                for s in range(3 * n):
                    e = tri[case, s]
                    r = edge_row[e]
                    if edge_dx[e] == 0:
                        bits = bits0[r]
                        idx = count[r]
                    else:
                        bits = bits1[r]
                        idx = count[r] + _POPCOUNT3[bits0[r]]
                    idx += _POPCOUNT3[bits & ((1 << edge_axis[e]) - 1)]
                    faces[out + s // 3, s % 3] = row_base[r] + idx
                out += n
                for r in range(4):
                    count[r] += _POPCOUNT3[bits0[r]]
                    bits0[r] = bits1[r]
                q0 = q1


def effective_level(volume: np.ndarray, level: float) -> float:
    """The level to compare against so that ``inside == (value >= level)`` has no ties.

    For integer data (int16 HU, or float data holding only whole numbers) the threshold moves
    to ``ceil(level) - 0.5``: the same voxels are inside, and no voxel equals the level, so
    interpolated vertices never sit on grid points. Float data keep the level as given.
    """
    if np.issubdtype(volume.dtype, np.integer):
        return float(np.ceil(level) - 0.5)
    return float(level)


def marching_cubes(volume: np.ndarray, level: float) -> IndexMesh:
    """Extract the closed iso-surface ``volume >= level`` in voxel-index coordinates.

    Parameters
    ----------
    volume : (K, J, I) array, int16 or float32, indexed [slice, row, column]; NaN-free.
    level : threshold in the volume's units (HU for CT). Use :func:`effective_level` for
        integer data; this function compares exactly as told.

    Returns
    -------
    IndexMesh with float32 vertices (column, row, slice) and int32 faces, closed at the volume
    border and wound counter-clockwise seen from outside in index space.
    """
    if volume.ndim != 3:
        raise ValueError(f"marching_cubes needs a 3-D volume, got shape {volume.shape}")
    if volume.dtype not in (np.int16, np.uint16, np.int32, np.float32, np.float64, np.uint8):
        raise ValueError(f"unsupported volume dtype {volume.dtype}")
    volume = np.ascontiguousarray(volume)
    # Compare in the volume's own precision (as the GPU kernels do): float32 data against a
    # float32 level. Integer data compare exactly against the float64 level.
    level = volume.dtype.type(level) if volume.dtype.kind == "f" else float(level)
    nk, nj, ni = volume.shape
    # Padded mask: one outside voxel before and after each axis, so the kernels never need a
    # bounds check when they look at the +1 neighbours of a cube's first corner.
    mask = np.zeros((nk + 2, nj + 2, ni + 2), dtype=np.uint8)
    # Span of ones per mask row; empty rows have first > last.
    first = np.full((nk + 2, nj + 2), ni + 2, dtype=np.int64)
    last = np.full((nk + 2, nj + 2), -1, dtype=np.int64)
    _inside_mask(volume, level, mask, first, last)
    t = TABLES
    # Owned cut edges per padded voxel, and each owner row's span of them; one extra row and
    # column of zeros so the triangle pass reads (a+1, b+1, c+1) without a check.
    edges = np.zeros((nk + 2, nj + 2, ni + 2), dtype=np.uint8)
    efirst = np.full((nk + 2, nj + 2), ni + 2, dtype=np.int64)
    elast = np.full((nk + 2, nj + 2), -1, dtype=np.int64)
    nvert_row = np.zeros((nk + 1, nj + 1), dtype=np.int64)
    ntri_row = np.zeros((nk + 1, nj + 1), dtype=np.int64)
    _count(mask, first, last, t["col_ntri"], t["col_bits"], edges, efirst, elast, nvert_row,
           ntri_row)
    vert_base = np.zeros_like(nvert_row)
    tri_base = np.zeros_like(ntri_row)
    np.cumsum(nvert_row.ravel()[:-1], out=vert_base.ravel()[1:])
    np.cumsum(ntri_row.ravel()[:-1], out=tri_base.ravel()[1:])
    n_verts = int(nvert_row.sum())
    n_tris = int(ntri_row.sum())
    if n_verts >= 2**31:
        raise ValueError("surface too large: more than 2^31 vertices")
    verts = np.empty((n_verts, 3), dtype=np.float32)
    faces = np.empty((n_tris, 3), dtype=np.int32)
    _generate(volume, level, mask, edges, efirst, elast, t["col_case"], t["tri"], t["ntri"],
              t["edge_row"], t["edge_dx"], t["edge_axis"], vert_base, tri_base, ntri_row,
              verts, faces)
    return IndexMesh(verts, faces)
