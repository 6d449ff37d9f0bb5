"""Smoothing, topology checks and the report."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.fixture(scope="module")
def head_bone(shared_dicom):
    """The real head CT's surface at 300 HU: 2.2 million triangles in 25 closed parts."""
    from gpu_worker import decode
    from gpu_worker import series as ser
    from gpu_worker import volume as vol
    from gpu_worker.cpu_engine import CpuEngine
    from gpu_worker.marching import effective_level
    from gpu_worker.pipeline import inspect

    found, stacks = inspect([shared_dicom / "ct-phantom-head-1mm"])
    volume = vol.to_volume(decode.decode_series(found, ser.choose_series(stacks, "largest")))
    return CpuEngine().iso_surface(volume.data, effective_level(volume.data, 300.0),
                                   volume.geometry)


def _welded(mesh, keep, into):
    """``mesh`` with vertex ``keep`` standing for vertex ``into`` too (two sheets meet)."""
    faces = mesh.faces.copy()
    faces[faces == into] = keep
    return M.Mesh(mesh.vertices, faces)


def test_the_check_passes_the_real_head_and_fails_each_defect_injected_into_it(head_bone):
    good = M.topology(head_bone)
    assert good.watertight and good.parts == 25
    faces = head_bone.faces
    middle = len(faces) // 2

    missing = M.topology(M.Mesh(head_bone.vertices, np.delete(faces, middle, axis=0)))
    assert not missing.closed and missing.boundary_edges == 3 and not missing.watertight

    doubled = M.topology(M.Mesh(head_bone.vertices, np.vstack([faces, faces[middle:middle + 1]])))
    assert not doubled.closed and doubled.non_manifold_edges == 3 and not doubled.watertight

    flipped = faces.copy()
    flipped[middle] = flipped[middle, ::-1]
    one_flipped = M.topology(M.Mesh(head_bone.vertices, flipped))
    assert one_flipped.closed and not one_flipped.oriented and not one_flipped.watertight

    # all flipped is consistent (a slicer would read it as inside-out; the volume says so)
    inside_out = M.Mesh(head_bone.vertices, faces[:, ::-1].copy())
    assert M.topology(inside_out).watertight and M.enclosed_volume_mm3(inside_out) < 0

    # two of the closed parts welded at one vertex each: every edge is still paired,
    # but the faces around that vertex are two fans
    a, b = faces[0, 0], faces[-1, 0]
    pinched = M.topology(_welded(head_bone, a, b))
    assert pinched.closed and pinched.oriented and pinched.pinched_vertices == 1
    assert not pinched.watertight and pinched.parts == 24

    degenerate = faces.copy()
    degenerate[middle, 1] = degenerate[middle, 0]
    assert not M.topology(M.Mesh(head_bone.vertices, degenerate)).watertight

    out_of_range = faces.copy()
    out_of_range[middle, 2] = len(head_bone.vertices)
    with pytest.raises(ValueError, match="does not exist"):
        M.topology(M.Mesh(head_bone.vertices, out_of_range))


def test_a_pinched_vertex_fails_the_check_and_the_report():
    ball = sphere_mesh(radius=6.0, n=16)
    other = M.Mesh(ball.vertices + np.float32(30), ball.faces + len(ball.vertices))
    pair = M.Mesh(np.vstack([ball.vertices, other.vertices]),
                  np.vstack([ball.faces, other.faces]))
    assert M.topology(pair).watertight and M.topology(pair).parts == 2
    report = M.report(_welded(pair, int(ball.faces[0, 0]), int(other.faces[0, 0])))
    assert not report.watertight and report.pinched_vertices == 1 and report.parts == 1


@settings(max_examples=60, deadline=None)
@given(drop=st.lists(st.integers(0, 10**6), max_size=3),
       flip=st.lists(st.integers(0, 10**6), max_size=3),
       double=st.lists(st.integers(0, 10**6), max_size=2))
def test_the_check_agrees_with_an_independent_edge_count(drop, flip, double):
    mesh = sphere_mesh(radius=5.0, n=14)
    faces = mesh.faces.copy()
    n = len(faces)
    for i in flip:
        faces[i % n] = faces[i % n, ::-1]
    faces = np.vstack([faces, faces[[i % n for i in double]]])
    faces = np.delete(faces, [i % n for i in drop], axis=0)
    topo = M.topology(M.Mesh(mesh.vertices, faces))
    closed, oriented = edge_check(faces, len(mesh.vertices))
    assert (topo.closed, topo.oriented) == (closed, oriented)
    assert topo.watertight == (closed and oriented)
