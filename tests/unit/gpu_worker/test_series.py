"""Grouping and sorting frames into series, and choosing one: slice order along the normal,
gaps, duplicates, time points, several series, localizers, single slices."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomstl.errors import SeriesChoiceError, SeriesGeometryError
from tests.dicom_factory import write_series
from tests.unit.gpu_worker.reading import load, ramp


def test_slices_are_ordered_by_position_not_instance_number_or_file_name(tmp_path):
    write_series(tmp_path, ramp(), intercept=0, shuffle_names=True, seed=5)
    decoded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(decoded.pixels[:, 0, 0], np.arange(6) * 100)
    np.testing.assert_allclose(decoded.geometry.origins[:, 2], np.arange(6))


def test_descending_positions_still_sort_along_the_normal(tmp_path):
    origins = [[0, 0, -2.0 * z] for z in range(6)]
    write_series(tmp_path, ramp(), origins=origins, intercept=0)
    decoded, _, _ = load(tmp_path)
    # along the normal (+z) the last written slice comes first
    np.testing.assert_array_equal(decoded.pixels[:, 0, 0], np.arange(6)[::-1] * 100)
    np.testing.assert_allclose(decoded.geometry.slice_spacings, 2.0)


def test_gaps_are_reported(tmp_path):
    write_series(tmp_path, ramp(), origins=[[0, 0, z] for z in (0, 1, 2, 3, 7, 8)])
    decoded, _, _ = load(tmp_path)
    assert any("gap" in w for w in decoded.warnings)


def test_uneven_duplicate_positions_are_an_error(tmp_path):
    write_series(tmp_path, ramp(), origins=[[0, 0, z] for z in (0, 1, 2, 2, 3, 4)])
    with pytest.raises(SeriesGeometryError, match="duplicate slice positions"):
        load(tmp_path)


def test_four_d_series_takes_one_time_point(tmp_path):
    uid = pydicom.uid.generate_uid()
    write_series(tmp_path / "t0", ramp(), series_uid=uid, intercept=0)
    write_series(tmp_path / "t1", ramp() + 7, series_uid=uid, intercept=0)
    decoded, stacks, _ = load(tmp_path)
    assert stacks[0].time_points == 2 and stacks[0].positions == 6
    assert decoded.pixels.shape[0] == 6
    assert any("2 time points" in w for w in decoded.warnings)
    with pytest.raises(SeriesChoiceError, match="out of range"):
        load(tmp_path, time_point=2)


def test_several_series_need_a_choice_and_the_error_lists_them(tmp_path):
    write_series(tmp_path / "a", ramp(6), description="AXIAL BONE")
    write_series(tmp_path / "b", ramp(8, 6, 6), description="AXIAL SOFT")
    with pytest.raises(SeriesChoiceError) as err:
        load(tmp_path)
    text = str(err.value)
    assert "2 series" in text and "AXIAL BONE" in text and "AXIAL SOFT" in text
    assert "6x6x8 voxels" in text
    decoded, stacks, _ = load(tmp_path, series="largest")
    assert decoded.pixels.shape == (8, 6, 6)
    other = next(s for s in stacks if s.description == "AXIAL BONE")
    decoded, _, _ = load(tmp_path, series=other.uid)
    assert decoded.pixels.shape == (6, 5, 4)
    with pytest.raises(SeriesChoiceError, match="not in the input"):
        load(tmp_path, series="1.2.3.4")


def test_a_localizer_in_the_same_series_is_split_off_and_ignored(tmp_path):
    uid = pydicom.uid.generate_uid()
    write_series(tmp_path / "ax", ramp(), series_uid=uid)
    write_series(tmp_path / "loc", ramp(1, 5, 4), series_uid=uid, row_dir=(0, 1, 0),
                 col_dir=(0, 0, -1))
    decoded, stacks, _ = load(tmp_path)
    assert len(stacks) == 2 and decoded.pixels.shape == (6, 5, 4)
    assert not stacks[1].usable and "single slice" in stacks[1].problem


def test_single_slice_is_a_clear_error():
    with pytest.raises(SeriesGeometryError, match="single slice"):
        load(get_testdata_file("MR_small.dcm"))


def test_real_four_d_mr_is_fifteen_slices_not_150(shared_dicom):
    decoded, stacks, found = load(shared_dicom / "mr-epi-axial-4d")
    assert stacks[0].positions == 15 and stacks[0].time_points == 10
    assert decoded.pixels.shape == (15, 64, 64)
    assert found.not_dicom == 1  # the README text file


def test_real_session_picks_the_axial_series_and_lists_the_rest(shared_dicom):
    decoded, stacks, _ = load(shared_dicom / "ct-session-mixed")
    assert decoded.pixels.shape == (28, 512, 512)
    assert decoded.description == "STD BRAIN 5MM"
    assert len(stacks) >= 3 and sum(s.usable for s in stacks) == 1


def test_orientation_noise_across_a_rounding_boundary_keeps_one_series(tmp_path):
    """Direction cosines 0.12349 and 0.12351 round apart at 3 decimals; still one stack."""
    uid = pydicom.uid.generate_uid()
    for z, c in enumerate([0.12349, 0.12351] * 3):
        col = np.array([0.0, np.sqrt(1 - c * c), c])
        write_series(tmp_path / f"s{z}", ramp(1), series_uid=uid, col_dir=tuple(col),
                     origins=[[0, 0, 2.0 * z]], seed=z)
    decoded, stacks, _ = load(tmp_path)
    assert len(stacks) == 1 and decoded.pixels.shape == (6, 5, 4)
