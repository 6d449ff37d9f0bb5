"""Where voxels are: voxel index (i column, j row, k slice) to patient LPS millimetres.

Each slice keeps its own ImagePositionPatient, so a stack with uneven spacing or a gantry
tilt (slices sheared along the table rather than stacked along their normal) maps exactly:
a point between slices k and k+1 is placed by linear interpolation between their origins.
For evenly spaced stacks this is the same as the 4x4 affine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numba
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Voxel-to-patient geometry of a volume indexed [k, j, i].

    row_dir : unit vector (LPS) along which the column index i grows (IOP's first triplet).
    col_dir : unit vector (LPS) along which the row index j grows (IOP's second triplet).
    spacing_ij : (column spacing along row_dir, row spacing along col_dir), mm.
    origins : (K, 3) LPS mm position of voxel (0, 0) of each slice, in slice order.
    """

    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing_ij: tuple[float, float]
    origins: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, row_dir x col_dir."""
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)

    @property
    def slice_steps(self) -> np.ndarray:
        """(K-1, 3) LPS mm vectors from each slice origin to the next."""
        return np.diff(self.origins, axis=0)

    @property
    def slice_spacings(self) -> np.ndarray:
        """(K-1,) distances between consecutive slices along the normal, mm."""
        return self.slice_steps @ self.normal

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (i, j, k, 1) to LPS mm, with the mean slice step as the k column."""
        step = self.slice_steps.mean(axis=0) if len(self.origins) > 1 else self.normal
        a = np.eye(4)
        a[:3, 0] = self.row_dir * self.spacing_ij[0]
        a[:3, 1] = self.col_dir * self.spacing_ij[1]
        a[:3, 2] = step
        a[:3, 3] = self.origins[0]
        return a

    @property
    def is_right_handed(self) -> bool:
        """False when the index axes form a mirrored frame (triangle winding must flip)."""
        return bool(np.linalg.det(self.affine[:3, :3]) > 0)

    @property
    def voxel_volume_mm3(self) -> float:
        """Mean volume of one voxel, mm^3."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel coordinates (i, j, k), fractional allowed, to (N, 3) LPS mm.

        Computed in float64; k outside [0, K-1] extrapolates from the nearest slice pair.
        """
        ijk = np.asarray(ijk, dtype=np.float64)
        k = ijk[:, 2]
        if len(self.origins) == 1:
            origin = np.broadcast_to(self.origins[0], (len(k), 3)) + k[:, None] * self.normal
        else:
            k0 = np.clip(np.floor(k).astype(np.int64), 0, len(self.origins) - 2)
            f = (k - k0)[:, None]
            origin = self.origins[k0] * (1.0 - f) + self.origins[k0 + 1] * f
        return (origin + ijk[:, 0:1] * (self.row_dir * self.spacing_ij[0])
                + ijk[:, 1:2] * (self.col_dir * self.spacing_ij[1]))

    def to_lps_float32(self, ijk: np.ndarray) -> np.ndarray:
        """``to_lps(ijk).astype(float32)`` in one parallel pass, bit for bit the same (the
        same float64 operations in the same order): the mesh's vertices in LPS mm."""
        ijk = np.ascontiguousarray(ijk)
        out = np.empty((len(ijk), 3), np.float32)
        _to_lps(ijk, np.ascontiguousarray(self.origins, dtype=np.float64), self.normal,
                self.row_dir * self.spacing_ij[0], self.col_dir * self.spacing_ij[1], out)
        return out

    def crop(self, k0: int, j0: int, i0: int, k1: int) -> Geometry:
        """Geometry of the sub-volume starting at voxel (k0, j0, i0) and ending before slice k1."""
        shift = i0 * self.spacing_ij[0] * self.row_dir + j0 * self.spacing_ij[1] * self.col_dir
        return replace(self, origins=self.origins[k0:k1] + shift)

    def downsample(self, factor: int, n_slices: int) -> Geometry:
        """Geometry after averaging blocks of factor^3 voxels (``n_slices`` blocks along k)."""
        half = (factor - 1) / 2.0
        shift = half * (self.spacing_ij[0] * self.row_dir + self.spacing_ij[1] * self.col_dir)
        blocks = self.origins[: n_slices * factor].reshape(n_slices, factor, 3).mean(axis=1)
        return Geometry(self.row_dir, self.col_dir,
                        (self.spacing_ij[0] * factor, self.spacing_ij[1] * factor),
                        blocks + shift)


@numba.njit(parallel=True, cache=True, nogil=True)
def _to_lps(ijk, origins, normal, row_step, col_step, out):  # pragma: no cover - compiled
    last = origins.shape[0] - 2
    for v in numba.prange(ijk.shape[0]):
        i, j, k = np.float64(ijk[v, 0]), np.float64(ijk[v, 1]), np.float64(ijk[v, 2])
        k0 = min(max(int(np.floor(k)), 0), last)
        f = k - k0
        for a in range(3):
            if last < 0:
                origin = origins[0, a] + k * normal[a]
            else:
                origin = origins[k0, a] * (1.0 - f) + origins[k0 + 1, a] * f
            out[v, a] = np.float32(origin + i * row_step[a] + j * col_step[a])
