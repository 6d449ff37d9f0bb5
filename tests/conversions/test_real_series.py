"""Every real series in ../shared/data/dicom: converts, closed, in place, deterministic."""

import tracemalloc

import numpy as np
import pytest
import trimesh

from dicomstl.errors import ArchiveError, NoImagesError, SeriesChoiceError, SeriesGeometryError
from gpu_worker import dicom_headers
from gpu_worker import series as ser
from gpu_worker.marching import T_EPS
from gpu_worker.pipeline import Options, convert
from gpu_worker.sources import collect_sources
from tests.conftest import REAL_SERIES
from tests.meshcheck import edge_check


def volume_corners_lps(folder):
    """LPS mm of the 8 corner voxel centres of the series the converter picks."""
    found = dicom_headers.scan(collect_sources([folder]))
    stack = ser.choose_series(ser.find_series(found))
    frames = ser.slice_frames(stack)
    geometry, _ = ser.geometry_of(frames)
    k, j, i = len(frames) - 1, stack.rows - 1, stack.cols - 1
    corners = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], float)
    return geometry.to_lps(corners), geometry


@pytest.mark.parametrize("name", list(REAL_SERIES))
def test_real_series_converts_to_a_closed_model_inside_its_volume(shared_dicom, tmp_path, name):
    out = tmp_path / "m.stl"
    result = convert([shared_dicom / name], out, Options(level=REAL_SERIES[name]))
    assert result.report.watertight and result.report.triangles > 1000
    # read back by an independent reader that merges vertices by position, as slicers do
    mesh = trimesh.load(out)
    assert edge_check(mesh.faces, len(mesh.vertices)) == (True, True)
    assert mesh.volume > 0
    corners, geometry = volume_corners_lps(shared_dicom / name)
    # border vertices sit T_EPS of a voxel outside the border voxels' centres
    slack = T_EPS * max(*geometry.spacing_ij, *np.abs(geometry.slice_spacings)) + 1e-3
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    assert (mesh.bounds[0] >= lo - slack).all() and (mesh.bounds[1] <= hi + slack).all()


@pytest.mark.parametrize("name", ["ct-phantom-tilt-neg", "mr-enhanced-sag", "ct-session-mixed"])
def test_bounding_box_equals_the_volumes_extent_in_lps(shared_dicom, tmp_path, name):
    """With every voxel inside, the model is the volume's own (possibly sheared) box."""
    out = tmp_path / "box.stl"
    convert([shared_dicom / name], out, Options(level=-1e9))
    mesh = trimesh.load(out)
    corners, geometry = volume_corners_lps(shared_dicom / name)
    tolerance = 2 * T_EPS * max(*geometry.spacing_ij, *np.abs(geometry.slice_spacings)) + 1e-3
    np.testing.assert_allclose(mesh.bounds[0], corners.min(axis=0), atol=tolerance)
    np.testing.assert_allclose(mesh.bounds[1], corners.max(axis=0), atol=tolerance)
    # evenly spaced stacks: the (sheared) box spans (n - 1 + 2 T_EPS) voxels on each axis
    found = dicom_headers.scan(collect_sources([shared_dicom / name]))
    stack = ser.choose_series(ser.find_series(found))
    edges = np.array([stack.cols, stack.rows, len(geometry.origins)]) - 1 + 2 * T_EPS
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(geometry.voxel_volume_mm3 * edges.prod(), rel=1e-3)


@pytest.mark.parametrize("name", ["ct-phantom-tilt-neg", "mr-epi-axial-4d"])
def test_shuffled_file_order_gives_the_identical_stl(shared_dicom, tmp_path, name):
    files = sorted(p for p in (shared_dicom / name).rglob("*") if p.is_file())
    shuffled = list(np.random.default_rng(11).permutation(files))
    a, b = tmp_path / "a.stl", tmp_path / "b.stl"
    convert(files, a, Options(level=REAL_SERIES[name]))
    convert(shuffled, b, Options(level=REAL_SERIES[name]))
    assert a.read_bytes() == b.read_bytes()


def test_gantry_tilt_is_sheared_not_stacked(shared_dicom):
    """The tilted series' slices advance along the table (z) while their normal is tilted by
    18.5 degrees: the geometry keeps each slice's own position."""
    _, geometry = volume_corners_lps(shared_dicom / "ct-phantom-tilt-neg")
    steps = geometry.slice_steps
    np.testing.assert_allclose(steps[:, :2], 0, atol=1e-3)  # straight along z
    tilt = np.degrees(np.arccos(abs(geometry.normal[2])))
    assert tilt == pytest.approx(18.5, abs=0.1)


@pytest.mark.parametrize("name, error, match", [
    ("garbage-after-preamble.dcm", NoImagesError, "not readable as DICOM"),
    ("j2k-pixeldata-cut.dcm", SeriesGeometryError, "single slice"),
    ("zip-slip.zip", ArchiveError, "unsafe path"),
    ("zip-bomb.zip", ArchiveError, "zip bomb"),
    ("orthanc-DummyCTInvalidRows.dcm", NoImagesError, "without a placeable image: no pixel data"),
    ("orthanc-Issue22-NoPixelData.dcm", NoImagesError, "without a placeable image: no pixel data"),
    ("orthanc-oob-monochrome-46341.dcm", NoImagesError,
     r"less pixel data than the image claims: 46341x46341 pixels x 1 frame\(s\) is 4.3 GB, "
     "the file holds 9 kB"),
])
def test_each_broken_file_gives_its_clear_error(shared_dicom, tmp_path, name, error, match):
    with pytest.raises(error, match=match):
        convert([shared_dicom / "broken" / name], tmp_path / "x.stl", Options())
    assert not (tmp_path / "x.stl").exists()


def test_a_file_claiming_4_gb_of_pixels_is_refused_before_anything_is_allocated(shared_dicom,
                                                                                tmp_path):
    tracemalloc.start()
    try:
        with pytest.raises(NoImagesError, match=r"4\.3 GB"):
            convert([shared_dicom / "broken" / "orthanc-oob-monochrome-46341.dcm"],
                    tmp_path / "x.stl", Options())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


@pytest.mark.parametrize("name, error, match", [
    ("ct-single-slice", SeriesGeometryError, "a single slice position, not a volume"),
    ("mr-enhanced-small-rle", NoImagesError, "several frames but no plane geometry"),
])
def test_each_series_that_cannot_be_a_volume_says_why(shared_dicom, tmp_path, name, error,
                                                      match):
    with pytest.raises(error, match=match):
        convert([shared_dicom / name], tmp_path / "x.stl", Options(level=300.0))
    assert not (tmp_path / "x.stl").exists()


def test_a_localizer_is_split_by_plane_and_offered_never_stacked(shared_dicom, tmp_path):
    folder = shared_dicom / "mr-localizer-3plane-ljpeg"
    with pytest.raises(SeriesChoiceError, match="3 series") as choice:
        convert([folder], tmp_path / "x.stl", Options(level=440.0))
    stacks = ser.find_series(dicom_headers.scan(collect_sources([folder])))
    assert sorted(s.plane for s in stacks) == ["axial", "coronal", "sagittal"]
    assert all(s.positions == 9 and s.usable for s in stacks)
    for stack in stacks:
        assert f"{stack.uid}: MR 'Loc (Right)', {stack.plane}, 9 slices" in str(choice.value)
        out = tmp_path / f"{stack.plane}.stl"
        result = convert([folder], out, Options(level=440.0, series=stack.uid))
        assert result.report.watertight
        # the model is thin across its own slices: 9 slices 10 mm apart span 80 mm
        normal_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[stack.plane]
        assert result.report.size_mm[normal_axis] <= 80 + 1
