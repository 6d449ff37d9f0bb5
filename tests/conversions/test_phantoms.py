"""Synthetic phantoms written with pydicom: the model lands where the patient is, in mm.

The voxel values are computed from each voxel's own LPS position, so any error in reading
orientation, spacing, positions or tilt moves or distorts the sphere.
"""

import numpy as np
import pytest
import trimesh

from gpu_worker.pipeline import Options, convert
from tests.dicom_factory import lps_grid, sphere_hu, write_series


def convert_series(folder, tmp_path, **options):
    out = tmp_path / "model.stl"
    result = convert([folder], out, Options(level=0.0, **options))
    mesh = trimesh.load(out)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    return result, mesh


def parts_by_size(mesh):
    parts = mesh.split(only_watertight=True)
    return sorted(parts, key=lambda p: -p.volume)


@pytest.mark.parametrize("row_dir", [(1, 0, 0), (-1, 0, 0)], ids=["row+x", "row-x"])
def test_object_on_the_patients_left_lands_at_plus_x(tmp_path, row_dir):
    """A big sphere on the patient's left (+x in LPS), a small one on the right. Written once
    with columns running right-to-left and once left-to-right: the model is the same."""
    shape = (24, 40, 64)
    col_dir = (0, 1, 0)
    spacing = (1.0, 1.0)
    # With row -x the index frame is mirrored (normal -z); the geometry must cope.
    x0 = -32.0 if row_dir[0] > 0 else 31.0
    origins = [[x0, -20.0, float(z)] for z in range(shape[0])]
    grid = lps_grid(shape, row_dir, col_dir, spacing, origins)
    big = sphere_hu(grid, (18.0, 0.0, 11.5), 8.0, 1.0)
    small = sphere_hu(grid, (-18.0, 0.0, 11.5), 4.0, 1.0)
    write_series(tmp_path / "s", np.maximum(big, small), row_dir=row_dir, col_dir=col_dir,
                 spacing_ij=spacing, origins=origins)
    _, mesh = convert_series(tmp_path / "s", tmp_path)
    big_part, small_part = parts_by_size(mesh)[:2]
    assert big_part.center_mass[0] == pytest.approx(18.0, abs=0.25)
    assert small_part.center_mass[0] == pytest.approx(-18.0, abs=0.25)
    assert big_part.volume == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.02)


def rotation(ax, angle):
    ax = np.asarray(ax, float) / np.linalg.norm(ax)
    k = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


CASES = {
    "oblique": dict(rot=rotation((1, 2, 3), 0.7), steps=[1.2] * 35, shear=0.0),
    "uneven-spacing": dict(rot=np.eye(3), steps=[0.8, 1.1, 1.6, 0.9, 1.3] * 7, shear=0.0),
    "gantry-tilt": dict(rot=rotation((1, 0, 0), np.deg2rad(-18.5)), steps=[1.1] * 35,
                        shear=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sphere_of_known_radius_lands_at_its_known_centre(tmp_path, case):
    p = CASES[case]
    row_dir, col_dir = p["rot"][:, 0], p["rot"][:, 1]
    normal = np.cross(row_dir, col_dir)
    # Gantry tilt: slices advance along the table (z), not along their own normal.
    advance = np.array([0, 0, 1.0]) if p["shear"] else normal
    start = np.array([-20.0, -22.0, -15.0])
    start = start[0] * row_dir + start[1] * col_dir - 17 * advance
    origins = start + np.concatenate([[0], np.cumsum(p["steps"][:-1])])[:, None] * advance
    shape = (len(origins), 44, 40)
    spacing = (1.0, 0.9)
    grid = lps_grid(shape, row_dir, col_dir, spacing, origins)
    centre = grid[shape[0] // 2, shape[1] // 2, shape[2] // 2] + np.array([0.4, -0.3, 0.2])
    radius = 9.0
    write_series(tmp_path / "s", sphere_hu(grid, centre, radius, 1.2), row_dir=row_dir,
                 col_dir=col_dir, spacing_ij=spacing, origins=origins)
    _, mesh = convert_series(tmp_path / "s", tmp_path)
    voxel = min(spacing)
    np.testing.assert_allclose(mesh.center_mass, centre, atol=0.5 * voxel)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.01)
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert radii.min() > radius - 0.5 * voxel and radii.max() < radius + 0.5 * voxel


def test_shuffled_file_order_gives_the_identical_stl(tmp_path):
    shape = (20, 30, 30)
    origins = [[0, 0, 1.5 * z] for z in range(shape[0])]
    grid = lps_grid(shape, (1, 0, 0), (0, 1, 0), (1, 1), origins)
    hu = sphere_hu(grid, (15, 14, 14), 8.0, 1.0)
    paths = write_series(tmp_path / "s", hu, origins=origins, shuffle_names=True, seed=1)
    a, b = tmp_path / "a.stl", tmp_path / "b.stl"
    convert(sorted(paths), a, Options(level=0.0))
    convert(list(np.random.default_rng(2).permutation(paths)), b, Options(level=0.0))
    assert a.read_bytes() == b.read_bytes()
