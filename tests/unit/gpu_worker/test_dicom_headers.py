"""Which files hold images, and what their headers say: non-DICOM files and objects without
an image are counted, files without a preamble or File Meta are read, enhanced multi-frame
geometry comes from the functional groups."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomstl.errors import NoImagesError
from tests.dicom_factory import write_series
from tests.unit.gpu_worker.reading import load, ramp


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


def test_real_broken_files_give_clear_errors(shared_dicom):
    broken = shared_dicom / "broken"
    with pytest.raises(NoImagesError, match="not readable as DICOM"):
        load(broken / "garbage-after-preamble.dcm")


def test_enhanced_multiframe_uses_functional_groups(shared_dicom):
    decoded, _stacks, _ = load(shared_dicom / "mr-enhanced-sag")
    assert decoded.pixels.shape == (63, 86, 86)
    g = decoded.geometry
    np.testing.assert_allclose(g.row_dir, [0, 1, 0])
    np.testing.assert_allclose(g.col_dir, [0, 0, -1])
    np.testing.assert_allclose(np.abs(g.slice_spacings), 2.2, atol=1e-3)
    np.testing.assert_allclose(g.spacing_ij, (2.23256, 2.23256))
