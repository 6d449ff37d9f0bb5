"""HU rescale, crop, downsample, smoothing and island removal."""

import numpy as np
import pytest
from scipy import ndimage

from dicomstl.errors import ConversionError, EmptySurfaceError
from gpu_worker import volume as vol
from gpu_worker.decode import DecodedSeries
from gpu_worker.geometry import Geometry


def geometry(k=4):
    return Geometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.5, 0.5),
                    np.array([[0, 0, 2.0 * z] for z in range(k)]))


def decoded(pixels, slopes, intercepts, modality="CT"):
    return DecodedSeries(pixels, np.asarray(slopes, float), np.asarray(intercepts, float),
                         geometry(len(pixels)), modality, "", [])


def test_ct_rescale_is_per_slice_and_stays_int16_when_whole():
    pixels = np.full((2, 3, 3), 1000, dtype=np.uint16)
    v = vol.to_volume(decoded(pixels, [1, 1], [-1024, -1000]))
    assert v.data.dtype == np.int16 and v.units == "HU"
    assert v.data[0, 0, 0] == -24 and v.data[1, 0, 0] == 0


def test_ct_fractional_slope_gives_float_hu():
    pixels = np.full((2, 2, 2), 100, dtype=np.int16)
    v = vol.to_volume(decoded(pixels, [0.5, 2.0], [-10, 0]))
    assert v.data.dtype == np.float32
    np.testing.assert_allclose(v.data[:, 0, 0], [40, 200])


def test_mr_keeps_stored_values():
    pixels = np.full((2, 2, 2), 700, dtype=np.uint16)
    v = vol.to_volume(decoded(pixels, [2, 2], [5, 5], modality="MR"))
    assert v.units == "stored" and v.data[0, 0, 0] == 700


def test_crop_parses_ranges_and_checks_bounds():
    v = vol.Volume(np.arange(4 * 5 * 6).reshape(4, 5, 6).astype(np.int16), geometry(), "CT",
                   "HU")
    box = vol.parse_crop("1:4,:3,2:", v.data.shape)
    c = vol.crop(v, box)
    assert c.data.shape == (2, 3, 3)
    assert c.data[0, 0, 0] == v.data[2, 0, 1]
    np.testing.assert_allclose(c.geometry.origins[0], [0.5, 0, 4])
    with pytest.raises(ConversionError, match="outside"):
        vol.parse_crop("0:7,:,:", v.data.shape)
    with pytest.raises(ConversionError, match="three ranges"):
        vol.parse_crop("0:2", v.data.shape)


def test_downsample_averages_blocks():
    data = np.zeros((4, 4, 4), np.int16)
    data[:2, :2, :2] = 8
    v = vol.downsample(vol.Volume(data, geometry(), "CT", "HU"), 2)
    assert v.data.shape == (2, 2, 2) and v.data[0, 0, 0] == 8 and v.data[1, 1, 1] == 0


def test_smoothing_sigma_is_in_millimetres():
    data = np.zeros((9, 21, 21), np.float32)
    data[4, 10, 10] = 1000.0
    v = vol.smooth(vol.Volume(data, geometry(9), "CT", "HU"), 1.0)
    profile = v.data[4, 10, :]
    # sigma 1 mm = 2 columns of 0.5 mm: the profile's variance is 4 columns^2
    x = np.arange(21) - 10
    variance = (profile * x**2).sum() / profile.sum()
    assert variance == pytest.approx(4.0, rel=0.05)


def blobs():
    data = np.zeros((10, 10, 20), np.int16)
    data[1:4, 1:4, 1:4] = 100  # 27 voxels
    data[5:9, 5:9, 5:9] = 100  # 64 voxels
    data[2, 2, 15] = 100  # 1 voxel
    data[8, 8, 18] = 100
    data[7, 7, 17] = 100  # corner-touching: one 26-connected part of 2 voxels
    return data


def test_keep_largest_n_and_min_volume():
    data, report = vol.keep_parts(blobs(), 49.5, "largest", 0, 1.0)
    assert report.parts_found == 4 and report.voxels_kept == 64
    assert (data >= 49.5).sum() == 64
    _, report = vol.keep_parts(blobs(), 49.5, "2", 0, 1.0)
    assert report.voxels_kept == 64 + 27
    _, report = vol.keep_parts(blobs(), 49.5, "all", 2.0, 1.0)
    assert report.parts_kept == 3, "corner-touching voxels are one part (26-connectivity)"
    with pytest.raises(EmptySurfaceError, match="island removal left nothing"):
        vol.keep_parts(blobs(), 49.5, "all", 1000.0, 1.0)


def test_nothing_above_threshold_is_a_clear_error():
    with pytest.raises(EmptySurfaceError, match="no voxel reaches"):
        vol.keep_parts(np.zeros((3, 3, 3), np.int16), 10.5, "all", 0, 1.0)


def test_inverted_threshold_selects_voxels_below_the_level():
    data = np.array([[[-1000, -401, -400, -399, 0]]], dtype=np.int16)
    flipped, level = vol.oriented(data, -400.0, invert=True)
    np.testing.assert_array_equal(flipped >= level, data < -400)
    fdata = data.astype(np.float32)
    flipped, level = vol.oriented(fdata, -400.0, invert=True)
    np.testing.assert_array_equal(flipped >= level, fdata <= -400)


def test_cpu_smoothing_is_scipys_gaussian_filter_exactly():
    rng = np.random.default_rng(2)
    data = rng.normal(0, 300, (12, 15, 18)).astype(np.float32)
    sigmas = (1.7, 0.9, 2.2)
    expected = ndimage.gaussian_filter(data, sigmas, mode="nearest")
    for axis, sigma in enumerate(sigmas):
        data = ndimage.correlate1d(data, vol.gaussian_weights(sigma), axis=axis,
                                   output=np.float32, mode="nearest")
    np.testing.assert_array_equal(data, expected)


def test_equal_sized_parts_are_kept_in_raster_order():
    sizes = np.array([0, 5, 9, 5, 9, 1])
    kept, report = vol.choose_parts(sizes, np.array([], np.int64), "3", 0.0, 1.0)
    assert kept.tolist() == [False, True, True, False, True, False]  # 9 (2), 9 (4), 5 (1)
    assert report.parts_kept == 3 and report.voxels_kept == 23


def test_band_is_inside_between_its_two_levels():
    values = np.arange(-300, 400, 7, dtype=np.int16).reshape(1, 1, -1)
    data, level = vol.band(values, -100, 300, np)
    assert data.dtype == np.int16
    from gpu_worker.marching import effective_level

    inside = data >= effective_level(data, level)
    np.testing.assert_array_equal(inside, (values >= -100) & (values < 300))
    floats = values.astype(np.float32) + 0.25
    data, level = vol.band(floats, -100, 300, np)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data >= level, (floats >= -100) & (floats < 300))
    extreme = np.array([[[-32768, 0, 32767]]], np.int16)
    data, level = vol.band(extreme, -30000, 30000, np)
    assert data.tolist() == [[[-2768, 29999, -2768]]]


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_band_surfaces_lie_where_one_sided_levels_put_them(dtype):
    """Air, two voxels of soft tissue (0 HU), bone: the band -100..300 has its outer surface
    where the level -100 has it and its inner one where 300 has it (a single min() field
    would put the inner one at 0.125 voxel instead of 0.3)."""
    from gpu_worker.marching import effective_level, marching_cubes

    row = np.array([-1000, -1000, 0, 0, 1000, 1000, 1000], dtype)
    values = np.broadcast_to(row, (5, 5, len(row))).copy()

    def crossings(data, level):
        mesh = marching_cubes(data, effective_level(data, level))
        x = mesh.vertices[:, 0]  # index order (i, j, k)
        inner = (mesh.vertices[:, 1] == 2) & (mesh.vertices[:, 2] == 2)
        return sorted(set(np.round(x[inner & (x > 0.5) & (x < len(row) - 1.5)], 5)))

    low, high = crossings(values, -100), crossings(values, 300)
    assert len(low) == len(high) == 1 and 1 < low[0] < 2 and 3 < high[0] < 4
    assert crossings(*vol.band(values, -100, 300, np)) == low + high
