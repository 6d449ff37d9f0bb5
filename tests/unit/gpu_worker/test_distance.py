"""The distance transform in mm and the internal voids."""

import numpy as np
import pytest
from scipy import ndimage

from gpu_worker import distance


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 8, 9), (7, 5, 6), (20, 30, 25)])
def test_distance_equals_scipy_on_the_padded_mask(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.85
    spacing = (1.3, 0.45, 0.6)
    ours = distance.distance_mm(mask, spacing)
    padded = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, padded[1:-1, 1:-1, 1:-1], rtol=1e-6, atol=1e-6)


def test_distance_counts_beyond_the_array_as_outside():
    depth = distance.distance_mm(np.ones((3, 3, 5), bool), (1.0, 1.0, 0.5))
    assert depth[1, 1].tolist() == [0.5, 1.0, 1.5, 1.0, 0.5]
    assert depth[0, 1, 2] == 1.0


def test_internal_voids_are_enclosed_background_only():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    mask[3:5, 3:5, 3:5] = False  # a void of 8 voxels
    mask[6, 6, 6] = False  # and one of 1
    mask[4, 4, 0:2] = False  # a dent open to the outside: not a void
    labels, n = distance.internal_voids(mask)
    assert n == 2
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == [1, 8]


def test_a_void_touching_only_at_a_corner_is_closed():
    # 6-connected background: a diagonal gap does not open a void (the part is 26-connected)
    mask = np.ones((5, 5, 5), bool)
    mask[2, 2, 2] = False
    mask[0, 0, 0] = False
    mask[1, 1, 1] = False
    _labels, n = distance.internal_voids(mask)
    assert n == 2  # (2, 2, 2) and (1, 1, 1): a corner does not connect background
