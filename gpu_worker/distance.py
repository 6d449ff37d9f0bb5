"""Distances and cavities of a binary mask, on the host (both engines call these with
``engine.to_host`` arrays): the Euclidean distance transform in millimetres and the internal
voids.

Masks are indexed [k slice, j row, i column] like volumes; ``spacing`` is (slice, row, column)
spacing in mm. The grid is treated as orthogonal: for a gantry-tilted stack (sheared slices)
distances are those of the unsheared grid, off by at most the shear (cos of the tilt).
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

#: 6-connectivity for the background: the complement of the 26-connected parts
#: (``volume.CONNECTIVITY``), so a void is never "leaking" through a corner that a part closes.
BACKGROUND_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def mask_spacing(geometry) -> tuple[float, float, float]:
    """(slice, row, column) spacing in mm of a ``geometry.Geometry``: the mean distance
    between slices along the normal (1 mm for a single slice) and the pixel spacing."""
    k = float(np.mean(np.abs(geometry.slice_spacings))) if len(geometry.origins) > 1 else 1.0
    return k, float(geometry.spacing_ij[1]), float(geometry.spacing_ij[0])


def bounding_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, slice, slice]:
    """The smallest box (k, j, i slices) holding every True voxel, grown by ``pad`` voxels
    where the array allows. An empty mask gives an empty box."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if len(hit) == 0:
            return slice(0, 0), slice(0, 0), slice(0, 0)
        box.append(slice(max(int(hit[0]) - pad, 0),
                         min(int(hit[-1]) + 1 + pad, mask.shape[axis])))
    return box[0], box[1], box[2]


def distance_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Exact Euclidean distance (mm, float32) from each True voxel's centre to the nearest
    False voxel's centre; 0 on False voxels. Voxels beyond the array count as False, so a
    mask touching the border is measured as closed there, as marching cubes closes it.

    The same values as ``scipy.ndimage.distance_transform_edt(padded, sampling=spacing)``
    (Felzenszwalb and Huttenlocher's separable lower envelope of parabolas, one pass per
    axis, in float64, stored as float32), in parallel with Numba: the head CT's bone (a
    135 x 416 x 309 box) takes 0.15 s on two cores, SciPy 2.6 s.

    References: P. F. Felzenszwalb, D. P. Huttenlocher, "Distance Transforms of Sampled
    Functions", Theory of Computing 8 (2012).
    """
    squared = np.empty(mask.shape, np.float32)  # squared mm; the arithmetic is float64
    _rows(np.ascontiguousarray(mask, dtype=np.bool_), float(spacing[2]) ** 2, squared)
    for axis in (1, 0):
        _pass(np.moveaxis(squared, axis, 0), float(spacing[axis]) ** 2)
    return np.sqrt(squared, out=squared)


@numba.njit(parallel=True, cache=True, nogil=True)
def _rows(mask, w2, out):  # pragma: no cover - compiled
    """The first pass, along the columns of a binary mask: w2 * (steps to the nearest
    False voxel of the row, or past its ends)^2, by a forward and a backward sweep."""
    nk, nj, ni = mask.shape
    for k in numba.prange(nk):
        for j in range(nj):
            last = -1  # the virtual background voxel before the row
            for i in range(ni):
                if not mask[k, j, i]:
                    last = i
                out[k, j, i] = i - last
            nxt = ni  # and after it
            for i in range(ni - 1, -1, -1):
                if not mask[k, j, i]:
                    nxt = i
                d = min(out[k, j, i], nxt - i)
                out[k, j, i] = w2 * d * d


@numba.njit(cache=True, nogil=True)
def _envelope(f, w2, out, v, fv, z):  # pragma: no cover - compiled
    """out[q] = min over sites p of w2*(q-p)^2 + f[p], with two more sites of height 0 at
    p = -1 and p = n (the background beyond the array); f = inf marks no site."""
    n = f.shape[0]
    k = 0
    v[0] = -1.0
    fv[0] = 0.0
    z[0] = -np.inf
    z[1] = np.inf
    for qi in range(n + 1):
        fq = f[qi] if qi < n else 0.0
        if fq == np.inf:
            continue
        q = float(qi)
        while True:  # z[0] = -inf ends the loop
            p = v[k]
            s = ((fq + w2 * q * q) - (fv[k] + w2 * p * p)) / (2.0 * w2 * (q - p))
            if s > z[k]:
                break
            k -= 1
        k += 1
        v[k] = q
        fv[k] = fq
        z[k] = s
        z[k + 1] = np.inf
    j = 0
    for qi in range(n):
        q = float(qi)
        while z[j + 1] < q:
            j += 1
        d = q - v[j]
        out[qi] = w2 * d * d + fv[j]


@numba.njit(parallel=True, cache=True, nogil=True)
def _pass(a, w2):  # pragma: no cover - compiled
    """The 1-D transform along axis 0 of ``a`` (any strides), in place."""
    n, rows, cols = a.shape
    for r in numba.prange(rows):
        f = np.empty(n)
        out = np.empty(n)
        v = np.empty(n + 2)
        fv = np.empty(n + 2)
        z = np.empty(n + 3)
        for c in range(cols):
            inside = False
            for q in range(n):
                f[q] = a[q, r, c]
                inside |= f[q] != 0.0
            if not inside:  # all background: stays 0
                continue
            _envelope(f, w2, out, v, fv, z)
            for q in range(n):
                a[q, r, c] = out[q]


def internal_voids(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (int32, 0 elsewhere) and count of the internal voids of ``mask``: the
    6-connected components of False voxels that do not touch the array's border (they would
    print as closed chambers). Numbered in raster order of their first voxel."""
    labels, n = ndimage.label(~mask, structure=BACKGROUND_CONNECTIVITY)
    if n == 0:
        return labels.astype(np.int32), 0
    border = np.unique(np.concatenate([
        labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
        labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    keep = np.ones(n + 1, bool)
    keep[border] = False
    keep[0] = False
    renumber = np.zeros(n + 1, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[labels], int(keep.sum())
