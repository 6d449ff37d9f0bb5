"""The reference marching cubes: closed, oriented, canonical, and right."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import marching_cubes as sk_marching_cubes
from skimage.measure import mesh_surface_area

from gpu_worker.marching import T_EPS, effective_level, marching_cubes
from tests.meshcheck import edge_check


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    v = verts.astype(np.float64)[faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def area(verts: np.ndarray, faces: np.ndarray) -> float:
    v = verts.astype(np.float64)[faces]
    return float(np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum()
                 / 2)


def edge_ids(mesh, shape) -> np.ndarray:
    """Recover each vertex's edge id (k, j, i, axis of its owner in the padded grid)."""
    v = mesh.vertices.astype(np.float64)
    frac = v - np.floor(v)
    axis = np.argmax(frac, axis=1)
    owner = np.floor(v).astype(np.int64) + 1  # padded index
    _nk, nj, ni = shape
    i, j, k = owner[:, 0], owner[:, 1], owner[:, 2]
    return ((k * (nj + 3) + j) * (ni + 3) + i) * 3 + axis


def sphere(shape, centre, radius):
    k, j, i = np.indices(shape, dtype=np.float32)
    return radius - np.sqrt((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2)


def test_sphere_is_closed_outward_and_has_the_right_volume():
    field = sphere((40, 44, 48), (24, 22, 20), 15.0)
    mesh = marching_cubes(field, 0.0)
    closed, oriented = edge_check(mesh.faces, len(mesh.vertices))
    assert closed and oriented
    volume = signed_volume(mesh.vertices, mesh.faces)
    assert volume > 0, "outward normals give a positive signed volume"
    assert volume == pytest.approx(4 / 3 * np.pi * 15**3, rel=0.01)
    centre = mesh.vertices.mean(axis=0)
    np.testing.assert_allclose(centre, (24, 22, 20), atol=0.05)


def test_agrees_with_scikit_image_lorensen_on_area_and_volume():
    k, j, i = np.indices((50, 60, 70), dtype=np.float32)
    field = np.sin(i / 5) + np.cos(j / 7) + np.sin(k / 4 + i / 9)
    field[[0, -1]] = field[:, [0, -1]] = -5  # pad so neither needs border closure
    field[:, :, [0, -1]] = -5
    ours = marching_cubes(field, 0.3)
    sk_verts, sk_faces, _, _ = sk_marching_cubes(field, 0.3, method="lorensen")
    assert len(ours.faces) == len(sk_faces)
    assert area(ours.vertices, ours.faces) == pytest.approx(
        mesh_surface_area(sk_verts, sk_faces), rel=0.005)
    assert abs(signed_volume(ours.vertices, ours.faces)) == pytest.approx(
        abs(signed_volume(sk_verts, sk_faces)), rel=0.005)


def test_vertices_are_in_canonical_edge_order_and_deterministic():
    field = sphere((20, 21, 22), (10, 11, 9), 7.5) + np.random.default_rng(3).normal(
        0, 0.3, (20, 21, 22)).astype(np.float32)
    a = marching_cubes(field, 0.0)
    b = marching_cubes(field.copy(), 0.0)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    ids = edge_ids(a, field.shape)
    assert (np.diff(ids) > 0).all(), "vertices sorted by (slice, row, column, axis)"


def test_object_touching_the_border_is_closed_at_the_border():
    field = np.full((6, 7, 8), 100, dtype=np.int16)  # everything inside
    mesh = marching_cubes(field, effective_level(field, 50))
    assert edge_check(mesh.faces, len(mesh.vertices)) == (True, True)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    np.testing.assert_allclose(lo, [-T_EPS] * 3, atol=1e-6)
    np.testing.assert_allclose(hi, [7 + T_EPS, 6 + T_EPS, 5 + T_EPS], atol=1e-5)
    assert signed_volume(mesh.vertices, mesh.faces) == pytest.approx(7 * 6 * 5, rel=0.01)


def test_empty_volume_gives_no_triangles():
    mesh = marching_cubes(np.zeros((4, 5, 6), np.float32), 1.0)
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)


def test_integer_ties_stay_manifold_after_merging_vertices_by_position():
    """Level equal to voxel values: with the half-integer effective level no vertex sits on
    a grid point, so merging equal positions (as slicers do) merges nothing."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 3, size=(12, 13, 14)).astype(np.int16)  # many voxels == level
    mesh = marching_cubes(data, effective_level(data, 1))
    assert edge_check(mesh.faces, len(mesh.vertices)) == (True, True)
    unique = np.unique(mesh.vertices, axis=0)
    assert len(unique) == len(mesh.vertices)


def test_effective_level_is_half_integer_only_for_integer_data():
    assert effective_level(np.zeros(1, np.int16), 300) == 299.5
    assert effective_level(np.zeros(1, np.int16), 300.2) == 300.5
    assert effective_level(np.zeros(1, np.float32), 300.2) == pytest.approx(300.2)


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="3-D"):
        marching_cubes(np.zeros((4, 4)), 0.5)
    with pytest.raises(ValueError, match="dtype"):
        marching_cubes(np.zeros((2, 2, 2), np.complex64), 0.5)


shapes = st.tuples(*(st.integers(1, 9) for _ in range(3)))


@settings(max_examples=150, deadline=None)
@given(data=shapes.flatmap(lambda s: st.one_of(
    arrays(np.int16, s, elements=st.integers(-3, 3)),
    arrays(np.float32, s, elements=st.floats(-2, 2, width=32)))),
    level=st.floats(-2.5, 2.5))
def test_random_volumes_give_closed_oriented_meshes(data, level):
    level = effective_level(data, level)
    mesh = marching_cubes(data, level)
    closed, oriented = edge_check(mesh.faces, len(mesh.vertices)) if len(mesh.faces) else (
        True, True)
    assert closed and oriented
    inside = data >= level
    assert (len(mesh.faces) == 0) == (not inside.any())
    if len(mesh.faces):
        assert signed_volume(mesh.vertices, mesh.faces) > 0
        # every vertex lies inside the padded grid, off the grid points
        assert (mesh.vertices >= -1).all()
        assert (mesh.vertices <= np.array(data.shape[::-1])).all()
        assert len(np.unique(mesh.vertices, axis=0)) == len(mesh.vertices)
