"""The GPU marching cubes' host-side logic, tested where there is no GPU: slab plans and the
LPS transform's numbers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpu_worker.geometry import Geometry
from gpu_worker.gpu.marching import plan_slabs, slab_slices_for, transform_arrays


@pytest.mark.parametrize("n_slices", [1, 2, 5, 54, 140])
@pytest.mark.parametrize("slab", [None, 1, 2, 3, 7, 1000])
def test_slab_plans_cover_every_row_plane_once_with_the_slices_each_pass_reads(n_slices, slab):
    slabs = plan_slabs(n_slices, slab)
    planes = [a for s in slabs for a in range(*s.rows)]
    assert planes == list(range(n_slices + 1))  # padded row planes 0..K, each once, in order
    for s in slabs:
        a0, a1 = s.rows
        # counting row a reads slices a-1 and a; emitting also reads a+1 (clipped to the volume)
        assert s.count_slices == (max(a0 - 1, 0), min(a1, n_slices))
        assert s.emit_slices == (max(a0 - 1, 0), min(a1 + 1, n_slices))
    for left, right in itertools.pairwise(slabs):
        # slabs share one slice for counting, two for emitting (fewer at the volume's ends)
        assert 0 <= left.count_slices[1] - right.count_slices[0] <= 1
        assert 0 <= left.emit_slices[1] - right.emit_slices[0] <= 2


def test_slab_height_follows_the_budget():
    assert slab_slices_for((140, 512, 512), 2, 10**9) is None
    assert slab_slices_for((140, 512, 512), 2, 10 * 2**20) == 18  # 20 slices, minus 2 halo
    assert slab_slices_for((140, 512, 512), 4, 1) == 1


def test_transform_arrays_are_the_geometry_numbers():
    col = np.array([0.0, 0.948, -0.317])
    origins = np.array([[-120.3, -80.7 + 0.31 * s, 40.2 + s] for s in (0.0, 1.2, 2.9, 4.0)])
    geometry = Geometry(np.array([1.0, 0.0, 0.0]), col / np.linalg.norm(col), (0.45, 0.48),
                        origins)
    xf, origins = transform_arrays(geometry)
    assert xf.dtype == np.float64 and xf.shape == (9,)
    np.testing.assert_array_equal(xf[:3], geometry.row_dir * geometry.spacing_ij[0])
    np.testing.assert_array_equal(xf[3:6], geometry.col_dir * geometry.spacing_ij[1])
    np.testing.assert_array_equal(xf[6:], geometry.normal)
    assert origins.flags.c_contiguous and origins.shape == (len(geometry.origins), 3)
