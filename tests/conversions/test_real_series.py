"""Every real series in ../shared/data/dicom: converts, closed, in place, deterministic."""

import numpy as np
import pytest
import trimesh

from dicomstl.errors import ArchiveError, NoImagesError, SeriesGeometryError
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
])
def test_each_broken_file_gives_its_clear_error(shared_dicom, tmp_path, name, error, match):
    with pytest.raises(error, match=match):
        convert([shared_dicom / "broken" / name], tmp_path / "x.stl", Options())
    assert not (tmp_path / "x.stl").exists()
