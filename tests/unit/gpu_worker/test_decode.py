"""Decoding pixels: every transfer syntax to the same values, and a clear error for
truncated, corrupt, undecodable or mixed-format pixel data."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomstl.errors import DecodeError
from tests.dicom_factory import write_series
from tests.unit.gpu_worker.reading import copy_twice, load, ramp


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


def test_truncated_pixel_data_is_a_clear_error(tmp_path):
    with pytest.raises(DecodeError, match="truncated"):
        load(copy_twice(tmp_path, "MR_truncated.dcm"))


def test_cut_jpeg2000_pixel_data_is_a_decode_error(shared_dicom, tmp_path):
    for z in range(2):
        ds = pydicom.dcmread(shared_dicom / "broken" / "j2k-pixeldata-cut.dcm")
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(tmp_path / f"s{z}")
    with pytest.raises(DecodeError, match="corrupt"):
        load(tmp_path)


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
