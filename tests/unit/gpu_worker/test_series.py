"""Finding, grouping, sorting and decoding series."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomstl.errors import DecodeError, NoImagesError, SeriesChoiceError, SeriesGeometryError
from gpu_worker import decode, dicom_headers
from gpu_worker import series as ser
from gpu_worker.sources import collect_sources
from tests.dicom_factory import write_series


def load(*inputs, series=None, time_point=0):
    found = dicom_headers.scan(collect_sources(inputs))
    dicom_headers.require_images(found)
    stacks = ser.find_series(found)
    stack = ser.choose_series(stacks, series)
    return decode.decode_series(found, stack, time_point), stacks, found


def ramp(k=6, j=5, i=4):
    """Slice z holds the value 100 * z, so the decoded order is visible in the pixels."""
    return (np.arange(k)[:, None, None] * 100 + np.zeros((k, j, i))).astype(np.int16)


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


def test_non_dicom_files_are_skipped_and_counted(tmp_path):
    write_series(tmp_path, ramp())
    (tmp_path / "README.txt").write_text("not dicom")
    decoded, _, found = load(tmp_path)
    assert found.not_dicom == 1 and decoded.pixels.shape[0] == 6


def test_no_images_error_counts_what_was_found(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NoImagesError, match="1 not readable as DICOM"):
        load(tmp_path)
    with pytest.raises(NoImagesError, match="without a placeable image"):
        load(get_testdata_file("rtplan.dcm"))


def test_single_slice_is_a_clear_error():
    with pytest.raises(SeriesGeometryError, match="single slice"):
        load(get_testdata_file("MR_small.dcm"))


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_RLE.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm"])
def test_transfer_syntaxes_decode_to_the_same_pixels(name, tmp_path):
    """Each compressed copy of MR_small, stacked twice, decodes like the uncompressed one."""
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.ImagePositionPatient = [0, 0, z]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"s{z}", enforce_file_format=False)
    decoded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(decoded.pixels[0], reference)


def copy_twice(tmp_path: Path, name: str) -> Path:
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file(name), force=True)
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(tmp_path / f"s{z}", enforce_file_format=False)
    return tmp_path


def test_files_without_preamble_or_file_meta_are_read(tmp_path):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
        ds.ImagePositionPatient = [0, 0, z]
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(tmp_path / f"s{z}", ds, implicit_vr=True, little_endian=True,
                         enforce_file_format=False)
    assert (tmp_path / "s0").read_bytes()[128:132] != b"DICM"
    decoded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(decoded.pixels[1], reference.pixel_array)


def test_truncated_pixel_data_is_a_clear_error(tmp_path):
    with pytest.raises(DecodeError, match="truncated"):
        load(copy_twice(tmp_path, "MR_truncated.dcm"))


def test_real_broken_files_give_clear_errors(shared_dicom):
    broken = shared_dicom / "broken"
    with pytest.raises(NoImagesError, match="not readable as DICOM"):
        load(broken / "garbage-after-preamble.dcm")


def test_cut_jpeg2000_pixel_data_is_a_decode_error(shared_dicom, tmp_path):
    for z in range(2):
        ds = pydicom.dcmread(shared_dicom / "broken" / "j2k-pixeldata-cut.dcm")
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(tmp_path / f"s{z}")
    with pytest.raises(DecodeError, match="corrupt"):
        load(tmp_path)


def test_enhanced_multiframe_uses_functional_groups(shared_dicom):
    decoded, _stacks, _ = load(shared_dicom / "mr-enhanced-sag")
    assert decoded.pixels.shape == (63, 86, 86)
    g = decoded.geometry
    np.testing.assert_allclose(g.row_dir, [0, 1, 0])
    np.testing.assert_allclose(g.col_dir, [0, 0, -1])
    np.testing.assert_allclose(np.abs(g.slice_spacings), 2.2, atol=1e-3)
    np.testing.assert_allclose(g.spacing_ij, (2.23256, 2.23256))


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


def test_unsupported_transfer_syntax_is_named_in_the_error(tmp_path):
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(tmp_path / f"s{z}")
    with pytest.raises(DecodeError, match=r"'MPEG2 Main Profile / Main Level'.*cannot decode"):
        load(tmp_path)


def test_slices_whose_values_do_not_fit_one_format_are_an_error(tmp_path):
    paths = write_series(tmp_path, ramp(), intercept=0)
    ds = pydicom.dcmread(paths[0])
    ds.PixelRepresentation = 0  # unsigned ...
    ds.PixelData = (np.full((5, 4), 60000, dtype=np.uint16)).tobytes()  # ... beyond int16
    ds.save_as(paths[0])
    with pytest.raises(DecodeError, match="different formats"):
        load(tmp_path)


def test_orientation_noise_across_a_rounding_boundary_keeps_one_series(tmp_path):
    """Direction cosines 0.12349 and 0.12351 round apart at 3 decimals; still one stack."""
    uid = pydicom.uid.generate_uid()
    for z, c in enumerate([0.12349, 0.12351] * 3):
        col = np.array([0.0, np.sqrt(1 - c * c), c])
        write_series(tmp_path / f"s{z}", ramp(1), series_uid=uid, col_dir=tuple(col),
                     origins=[[0, 0, 2.0 * z]], seed=z)
    decoded, stacks, _ = load(tmp_path)
    assert len(stacks) == 1 and decoded.pixels.shape == (6, 5, 4)
