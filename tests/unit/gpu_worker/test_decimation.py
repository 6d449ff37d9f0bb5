"""Decimation that keeps a closed mesh closed (gpu_worker.decimation)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from gpu_worker import decimation as D
from gpu_worker.marching import marching_cubes
from gpu_worker.mesh import Mesh, enclosed_volume_mm3, topology
from tests.meshcheck import edge_check


@pytest.fixture(scope="module")
def head_bone(shared_dicom):
    """The bone of the real head CT as a conversion with --keep largest makes it, before
    decimation: about 1.5 million triangles (LPS mm)."""
    from gpu_worker import decode
    from gpu_worker import series as ser
    from gpu_worker import volume as vol
    from gpu_worker.cpu_engine import CpuEngine
    from gpu_worker.marching import effective_level
    from gpu_worker.pipeline import inspect

    found, stacks = inspect([shared_dicom / "ct-phantom-head-1mm"])
    volume = vol.to_volume(decode.decode_series(found, ser.choose_series(stacks, "largest")))
    level = effective_level(volume.data, 300.0)
    engine = CpuEngine()
    data, _ = engine.keep_parts(volume.data, level, "largest", 0.0,
                                volume.geometry.voxel_volume_mm3)
    mesh = engine.iso_surface(data, level, volume.geometry)
    assert topology(mesh).watertight and len(mesh.faces) > 1_000_000
    return mesh


@pytest.fixture(scope="module")
def head_300k(head_bone):
    return D.decimate(head_bone, max_triangles=300_000)


def assert_closed_and_close(original, out, target, volume_rel=0.01):
    topo = topology(out)
    assert topo.watertight, topo
    assert getattr(topo, "pinched_vertices", 0) == 0
    assert topo.parts == topology(original).parts
    assert edge_check(out.faces, len(out.vertices)) == (True, True)  # an independent check
    assert 0.97 * target <= len(out.faces) <= 1.03 * target
    assert out.vertices.dtype == np.float32 and out.faces.dtype == np.int32
    volume = enclosed_volume_mm3(original)
    assert volume > 0 and enclosed_volume_mm3(out) == pytest.approx(volume, rel=volume_rel)
    assert np.abs(out.vertices.min(axis=0) - original.vertices.min(axis=0)).max() < 1.0
    assert np.abs(out.vertices.max(axis=0) - original.vertices.max(axis=0)).max() < 1.0


def test_real_head_bone_to_300k_is_closed_and_keeps_its_shape(head_bone, head_300k):
    out, warning = head_300k
    assert warning is None
    assert_closed_and_close(head_bone, out, 300_000)


@pytest.mark.parametrize(("ratio", "max_triangles"), [(None, 100_000), (0.9, None)])
def test_real_head_bone_to_a_budget_or_a_fraction_is_closed(head_bone, ratio, max_triangles):
    out, warning = D.decimate(head_bone, ratio=ratio, max_triangles=max_triangles)
    assert warning is None
    target = max_triangles or round(len(head_bone.faces) * (1 - ratio))
    assert_closed_and_close(head_bone, out, target)


def test_the_same_input_gives_the_same_bytes(head_bone, head_300k):
    again, _ = D.decimate(head_bone, max_triangles=300_000)
    first, _ = head_300k
    assert first.vertices.tobytes() == again.vertices.tobytes()
    assert first.faces.tobytes() == again.faces.tobytes()


def cube():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                  [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.float32) * 10
    f = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                  [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]], np.int32)
    return Mesh(v, f)


def sphere(radius=12.0, n=32):
    k, j, i = np.indices((n, n, n), dtype=np.float32)
    c = n / 2 - 0.5
    m = marching_cubes(radius - np.sqrt((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2), 0.0)
    return Mesh(m.vertices, m.faces)


def test_nothing_to_do_returns_the_input_itself():
    tiny = cube()
    assert D.decimate(tiny, ratio=0.5) == (tiny, None)  # fewer than 100 triangles
    ball = sphere()
    for kwargs in ({}, {"ratio": 0.0}, {"ratio": None},
                   {"max_triangles": len(ball.faces)}, {"max_triangles": 10**9}):
        out, warning = D.decimate(ball, **kwargs)
        assert out is ball and warning is None, kwargs


def test_an_open_input_comes_back_undecimated_with_a_warning():
    ball = sphere()
    holed = Mesh(ball.vertices, ball.faces[1:])
    out, warning = D.decimate(holed, ratio=0.5)
    assert out is holed and warning == D.NOT_CLOSED_INPUT


def test_a_broken_result_is_never_returned(monkeypatch):
    ball = sphere()
    real = D._simplify

    def drops_a_face(*args):
        positions, faces = real(*args)
        return positions, faces[1:]

    monkeypatch.setattr(D, "_simplify", drops_a_face)
    out, warning = D.decimate(ball, ratio=0.5)
    assert out is ball and warning == D.NOT_KEPT_CLOSED


def test_a_sphere_keeps_its_volume_and_stays_round():
    ball = sphere()
    out, warning = D.decimate(ball, max_triangles=1000)
    assert warning is None
    assert_closed_and_close(ball, out, 1000)
    radius = np.linalg.norm(out.vertices - (32 / 2 - 0.5), axis=1)
    assert np.abs(radius - 12.0).max() < 0.3


def blobs(seed: int, size: int, sigma: float, fill: float) -> Mesh:
    """Marching cubes of smoothed noise: many parts, handles, cavities and thin necks, on
    an anisotropic grid (voxels 0.5 x 0.8 x 2 mm)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size, size)), sigma)
    field[[0, -1]] = field[:, [0, -1]] = field[:, :, [0, -1]] = field.min()
    m = marching_cubes(field.astype(np.float32), float(np.quantile(field, 1 - fill)))
    return Mesh(m.vertices * np.float32([0.5, 0.8, 2.0]), m.faces)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(12, 40),
       sigma=st.floats(0.8, 3.0), fill=st.floats(0.05, 0.6), keep=st.floats(0.01, 0.9))
def test_random_closed_meshes_stay_closed(seed, size, sigma, fill, keep):
    mesh = blobs(seed, size, sigma, fill)
    if len(mesh.faces) == 0:
        return
    before = topology(mesh)
    assert before.watertight
    out, warning = D.decimate(mesh, ratio=1 - keep)
    if warning is not None:  # allowed only as "the input, unchanged"
        assert out is mesh
        return
    after = topology(out)
    assert after.watertight, after
    assert after.parts == before.parts
    assert edge_check(out.faces, len(out.vertices)) == (True, True)
    assert enclosed_volume_mm3(out) > 0
    if len(mesh.faces) >= 100 and round(len(mesh.faces) * keep) < len(mesh.faces):
        # progress; the target itself is out of reach where parts, handles and cavities
        # need more triangles than it leaves (a torus cannot become a tetrahedron)
        assert len(out.faces) < len(mesh.faces)


@pytest.mark.parametrize("keep", [0.2, 0.1])
def test_a_large_mesh_is_decimated_in_parallel_parts_and_stays_closed(keep):
    mesh = blobs(7, 80, 2.5, 0.3)  # 254 k triangles in 31 parts: above D.SPLIT_ABOVE
    assert len(mesh.faces) > D.SPLIT_ABOVE
    out, warning = D.decimate(mesh, ratio=1 - keep)
    assert warning is None
    # small blobs on a coarse grid: 0.9 % of the volume goes at 10 %
    assert_closed_and_close(mesh, out, round(len(mesh.faces) * keep), volume_rel=0.02)
    again, _ = D.decimate(mesh, ratio=1 - keep)
    assert again.faces.tobytes() == out.faces.tobytes()
    assert again.vertices.tobytes() == out.vertices.tobytes()


def test_warm_up_runs_both_paths():
    assert D.warm_up() > 0
