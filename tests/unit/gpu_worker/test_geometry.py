"""Voxel index to LPS millimetres."""

import numpy as np
import pytest

from gpu_worker.geometry import Geometry


def axial(origins, spacing=(0.5, 0.6)):
    return Geometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing,
                    np.asarray(origins, dtype=np.float64))


def test_uniform_stack_matches_the_affine():
    g = axial([[10, 20, 30 + 2 * k] for k in range(5)])
    ijk = np.array([[0, 0, 0], [3, 4, 2], [1.5, 2.25, 3.5]])
    homogeneous = np.c_[ijk, np.ones(len(ijk))] @ g.affine.T
    np.testing.assert_allclose(g.to_lps(ijk), homogeneous[:, :3])
    np.testing.assert_allclose(g.to_lps(ijk)[1], [10 + 1.5, 20 + 2.4, 34])
    assert g.is_right_handed
    assert g.voxel_volume_mm3 == pytest.approx(0.5 * 0.6 * 2)


def test_uneven_spacing_interpolates_between_the_slices_own_positions():
    g = axial([[0, 0, 0], [0, 0, 1], [0, 0, 4]])
    z = g.to_lps(np.array([[0, 0, 0.5], [0, 0, 1.5], [0, 0, 2.0], [0, 0, 2.5]]))[:, 2]
    np.testing.assert_allclose(z, [0.5, 2.5, 4.0, 5.5])  # 2.5 extrapolates the last step
    np.testing.assert_allclose(g.slice_spacings, [1, 3])


def test_descending_slices_make_a_mirrored_index_frame():
    g = axial([[0, 0, -k] for k in range(4)])
    assert not g.is_right_handed


def test_crop_and_downsample_keep_voxels_where_they_were():
    g = axial([[5, 6, 2 * k] for k in range(8)])
    c = g.crop(2, 3, 4, 6)
    np.testing.assert_allclose(c.to_lps(np.array([[0, 0, 0]])), g.to_lps(np.array([[4, 3, 2]])))
    d = g.downsample(2, 4)
    # the first block's centre is the mean of voxels 0 and 1 along each axis
    np.testing.assert_allclose(d.to_lps(np.array([[0, 0, 0]])),
                               g.to_lps(np.array([[0.5, 0.5, 0.5]])))
    assert d.spacing_ij == (1.0, 1.2)


@pytest.mark.parametrize("origins", [
    [[-120.3, 88.1, 17.25]],  # one slice: along the normal
    [[0, 0, 0], [0.2, 0.1, 1.1], [0.45, 0.2, 4.0], [0.5, 0.3, 4.9]],  # tilted, uneven
])
def test_the_float32_vertices_equal_the_reference_bit_for_bit(origins):
    row = np.array([0.9, 0.1, 0.0]) / np.linalg.norm([0.9, 0.1, 0.0])
    col = np.cross([0, 0, 1.0], row)
    g = Geometry(row, col, (0.488, 0.731), np.asarray(origins, dtype=np.float64))
    rng = np.random.default_rng(3)
    ijk = rng.uniform(-2, 6, (20000, 3)).astype(np.float32)
    ijk[:100] = np.round(ijk[:100])  # on grid points and slice boundaries
    np.testing.assert_array_equal(g.to_lps_float32(ijk), g.to_lps(ijk).astype(np.float32))
