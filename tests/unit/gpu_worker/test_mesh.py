"""Decimation, smoothing, topology checks and the report."""

import numpy as np
import pytest

from gpu_worker import mesh as M
from gpu_worker.marching import marching_cubes
from tests.meshcheck import edge_check


def sphere_mesh(radius=12.0, n=32):
    k, j, i = np.indices((n, n, n), dtype=np.float32)
    c = n / 2 - 0.5
    field = radius - np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2)
    m = marching_cubes(field, 0.0)
    return M.Mesh(m.vertices, m.faces)


def cube_mesh():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                  [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.float32) * 10
    f = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                  [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]], np.int32)
    return M.Mesh(v, f)


def test_report_of_a_known_cube():
    r = M.report(cube_mesh())
    assert r.triangles == 12 and r.vertices == 8 and r.parts == 1 and r.watertight
    assert r.surface_area_mm2 == pytest.approx(600)
    assert r.volume_cm3 == pytest.approx(1.0)
    assert r.size_mm == (10, 10, 10)


def test_topology_detects_holes_flips_and_non_manifold_edges():
    cube = cube_mesh()
    holed = M.Mesh(cube.vertices, cube.faces[1:])
    assert M.topology(holed).boundary_edges == 3 and not M.topology(holed).watertight
    flipped = cube.faces.copy()
    flipped[0] = flipped[0, ::-1]
    t = M.topology(M.Mesh(cube.vertices, flipped))
    assert t.closed and not t.oriented
    doubled = M.Mesh(cube.vertices, np.vstack([cube.faces, cube.faces[:1]]))
    assert M.topology(doubled).non_manifold_edges == 3 and not M.topology(doubled).closed


def test_decimate_to_a_budget_keeps_the_mesh_closed_and_its_volume():
    mesh = sphere_mesh()
    out, warning = M.decimate(mesh, max_triangles=1000)
    assert warning is None
    assert 900 <= len(out.faces) <= 1000
    assert edge_check(out.faces, len(out.vertices)) == (True, True)
    assert M.enclosed_volume_mm3(out) == pytest.approx(M.enclosed_volume_mm3(mesh), rel=0.02)
    same, _ = M.decimate(mesh, ratio=0.0)
    assert same is mesh


def test_taubin_smoothing_keeps_topology_and_does_not_shrink():
    mesh = sphere_mesh()
    noisy = M.Mesh(mesh.vertices + np.random.default_rng(0).normal(
        0, 0.15, mesh.vertices.shape).astype(np.float32), mesh.faces)
    smooth = M.taubin_smooth(noisy, iterations=10)
    np.testing.assert_array_equal(smooth.faces, mesh.faces)
    assert M.enclosed_volume_mm3(smooth) == pytest.approx(M.enclosed_volume_mm3(mesh), rel=0.02)
    # smoother: the surface area of the noisy mesh drops back toward the clean one
    assert M.surface_area_mm2(smooth) < M.surface_area_mm2(noisy)
    assert M.surface_area_mm2(smooth) == pytest.approx(M.surface_area_mm2(mesh), rel=0.03)
