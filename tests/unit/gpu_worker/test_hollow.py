"""Fill voids, hollow to a wall, drain holes: on the oriented data, before marching cubes."""

import numpy as np
import pytest
from scipy import sparse

from dicomstl.errors import ConversionError
from gpu_worker import hollow
from gpu_worker import mesh as meshops
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.geometry import Geometry

LEVEL = -0.5  # the effective level of whole-number data thresholded at 0


def ball(n=40, radius=8.0, spacing=0.5):
    """int16 data, +1000 inside a ball of ``radius`` mm, -1000 outside; its geometry."""
    c = (n - 1) / 2
    k, j, i = np.mgrid[:n, :n, :n]
    inside = ((k - c) ** 2 + (j - c) ** 2 + (i - c) ** 2) * spacing**2 <= radius**2
    geom = Geometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (spacing, spacing),
                    np.array([[0, 0, spacing * z] for z in range(n)]))
    return np.where(inside, 1000, -1000).astype(np.int16), geom


def shells(mesh: meshops.Mesh) -> list[float]:
    """Signed volume (mm^3) of each connected part of a mesh, largest first."""
    f = mesh.faces.astype(np.int64)
    n = len(mesh.vertices)
    graph = sparse.coo_matrix((np.ones(len(f) * 2), (np.r_[f[:, 0], f[:, 1]],
                                                     np.r_[f[:, 1], f[:, 2]])), (n, n))
    _count, part = sparse.csgraph.connected_components(graph, directed=False)
    v = mesh.vertices.astype(np.float64)[f]
    signed = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])) / 6.0
    volumes = np.bincount(part[f[:, 0]], weights=signed)
    return sorted(volumes[volumes != 0], key=abs, reverse=True)


def test_reflect_mirrors_about_the_level_and_stays_below():
    data = np.array([[[1000, 0, -1000, 32000]]], np.int16)
    out = hollow.reflect(data, data >= LEVEL, LEVEL)
    assert out.tolist() == [[[-1001, -1, -1000, -32001]]]
    assert out.dtype == np.int16 and data[0, 0, 0] == 1000  # a copy
    floats = np.array([[[0.2, 5.0]]], np.float32)
    assert (hollow.reflect(floats, floats >= 0.1, 0.1) < 0.1).all()


def test_fill_voids_leaves_one_shell():
    data, geom = ball()
    data[18:22, 18:22, 18:22] = -1000
    filled, voxels = hollow.fill_voids(data, LEVEL)
    assert voxels == 64 and (filled >= LEVEL).sum() == (data >= LEVEL).sum() + 64
    assert len(shells(CpuEngine().iso_surface(filled, LEVEL, geom))) == 1


def test_hollow_keeps_a_wall_and_the_inner_shell_faces_the_cavity():
    data, geom = ball(radius=8.0)
    solid_mesh = CpuEngine().iso_surface(data, LEVEL, geom)
    out, changes = hollow.solid_or_hollow(data, LEVEL, geom, False, 2.0, 0, 3.0)
    mesh = CpuEngine().iso_surface(out, LEVEL, geom)
    assert CpuEngine().check(mesh).watertight
    outer, inner = shells(mesh)
    assert outer == pytest.approx(shells(solid_mesh)[0], rel=1e-6)  # the outside is kept
    assert inner < 0  # the inner shell's normals point into the cavity
    radius = (-inner * 3 / (4 * np.pi)) ** (1 / 3)
    assert 8.0 - 2.0 - 0.25 <= radius <= 8.0 - 2.0 + 0.25  # a 2 mm wall, within half a voxel
    assert changes.cavity_voxels > 0


def test_a_wall_too_thick_for_the_model_is_a_clear_error():
    data, geom = ball(radius=4.0)
    with pytest.raises(ConversionError,
                       match=r"leaves no cavity: the model is at most \d+\.\d mm thick"):
        hollow.solid_or_hollow(data, LEVEL, geom, False, 4.5, 0, 3.0)


@pytest.mark.parametrize("col_dir", [(0, 1.0, 0), (0, 0, -1.0)])
def test_a_drain_hole_runs_down_along_minus_s(col_dir):
    """Axial, and coronal with rows going towards the feet (the index frame turned)."""
    data, _ = ball(radius=8.0)
    geom = Geometry(np.array([1.0, 0, 0]), np.array(col_dir), (0.5, 0.5),
                    np.array([np.cross((1.0, 0, 0), col_dir) * 0.5 * z for z in range(40)]))
    out, changes = hollow.solid_or_hollow(data, LEVEL, geom, False, 2.0, 1, 2.0)
    mesh = CpuEngine().iso_surface(out, LEVEL, geom)
    assert CpuEngine().check(mesh).watertight
    assert len(shells(mesh)) == 1  # the cavity opens to the outside
    (hole,) = changes.holes_lps_mm
    centre = geom.to_lps(np.array([[19.5, 19.5, 19.5]]))[0]
    assert hole[2] < centre[2] - 5.0  # the lowest point of the cavity: -S
    carved = (data >= LEVEL) & (out < LEVEL)
    kji = np.argwhere(carved & ~(hollow.cavity(data >= LEVEL, (0.5, 0.5, 0.5), 2.0)[0]))
    lps = geom.to_lps(kji[:, ::-1].astype(float))
    assert lps[:, 2].max() < centre[2] - 5.0  # the hole goes down through the bottom wall
    assert np.abs(hole[0] - centre[0]) <= 0.5  # below the middle of the cavity
    assert np.linalg.norm(lps[:, :2] - hole[:2], axis=1).max() <= 1.0 + 1e-6  # 2 mm wide


def test_more_holes_than_cavities_spread_over_the_largest():
    data, geom = ball(radius=9.0)
    _out, changes = hollow.solid_or_hollow(data, LEVEL, geom, False, 1.5, 3, 1.0)
    points = np.array(changes.holes_lps_mm)
    assert len(points) == 3
    gaps = [np.linalg.norm(a - b) for n, a in enumerate(points) for b in points[n + 1:]]
    assert min(gaps) >= 4 * 1.0 + 1.5
