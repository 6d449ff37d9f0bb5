"""The GPU engine equals the CPU reference: same faces, same vertex bits, same STL bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_worker import volume as vol
from gpu_worker.geometry import Geometry
from gpu_worker.gpu import device as gpu_device
from gpu_worker.gpu import volume as gpu_volume
from gpu_worker.gpu.engine import GpuEngine
from gpu_worker.gpu.marching import marching_cubes_gpu
from gpu_worker.gpu.stl import binary_stl_bytes_gpu
from gpu_worker.marching import effective_level, marching_cubes
from gpu_worker.mesh import Mesh
from gpu_worker.pipeline import Options, convert
from gpu_worker.stl import binary_stl_bytes
from tests.conftest import REAL_SERIES
from tests.meshcheck import edge_check

SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def volumes(draw):
    """Random volumes: odd sizes, int16 or float32, blobs touching the border, thin sheets."""
    shape = tuple(draw(st.integers(1, 13)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "blobs", "sheet"]))
    if kind == "noise":
        data = rng.normal(0, 300, shape)
    elif kind == "blobs":
        data = np.full(shape, -1000.0)
        for _ in range(draw(st.integers(1, 4))):
            c = [rng.integers(0, n) for n in shape]
            r = rng.uniform(0.5, 4)
            k, j, i = np.indices(shape)
            data[(k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= r * r] = 1000
    else:  # one voxel thick along a random axis
        data = np.full(shape, -1000.0)
        axis = draw(st.integers(0, 2))
        index = [slice(None)] * 3
        index[axis] = draw(st.integers(0, shape[axis] - 1))
        data[tuple(index)] = 700
    dtype = draw(st.sampled_from([np.int16, np.float32]))
    data = np.clip(np.round(data), -32768, 32767).astype(dtype) if dtype == np.int16 else (
        data.astype(np.float32))
    level = float(draw(st.sampled_from([0.0, 300.0, -250.5, 123.25])))
    if draw(st.booleans()) and data.size:
        level = float(data.flat[draw(st.integers(0, data.size - 1))])  # ties with voxel values
    return data, level


def assert_same_mesh(gpu_verts, gpu_faces, cpu_verts, cpu_faces):
    verts, faces = gpu_verts.get(), gpu_faces.get()
    assert faces.shape == cpu_faces.shape
    np.testing.assert_array_equal(faces, cpu_faces)
    assert verts.dtype == np.float32 and verts.shape == cpu_verts.shape
    np.testing.assert_array_equal(verts, cpu_verts)  # bit for bit, not only within 1e-3 mm


@SLOW
@given(case=volumes())
def test_marching_cubes_equals_the_cpu_reference(cupy, case):
    data, level = case
    level = effective_level(data, level)
    cpu = marching_cubes(data, level)
    verts, faces = marching_cubes_gpu(cupy.asarray(data), level)
    assert_same_mesh(verts, faces, cpu.vertices, cpu.faces)


@SLOW
@given(case=volumes(), slab=st.integers(1, 7))
def test_slabs_give_the_whole_volume_run(cupy, case, slab):
    data, level = case
    level = effective_level(data, level)
    whole = marching_cubes_gpu(cupy.asarray(data), level)
    slabbed = marching_cubes_gpu(data, level, slab_slices=slab)  # host data, uploaded per slab
    assert_same_mesh(*slabbed, whole[0].get(), whole[1].get())


def tilted_geometry(n_slices: int, far: bool) -> Geometry:
    """A sheared, unevenly spaced stack; ``far`` puts it 4 m from the patient origin."""
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, 0.948, -0.317])
    col /= np.linalg.norm(col)
    steps = np.cumsum(np.r_[0, np.linspace(1.1, 1.9, n_slices - 1)])
    origins = np.array([[-120.3, -80.7 + 0.31 * s, 40.2 + s] for s in steps])
    if far:
        origins += 4000.0
    return Geometry(row, col, (0.451, 0.482), origins)


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_lps_vertices_equal_the_cpu_transform(cupy, far, flip):
    rng = np.random.default_rng(7)
    data = (rng.normal(0, 300, (9, 11, 10))).astype(np.int16)
    geometry = tilted_geometry(9, far)
    cpu = marching_cubes(data, 299.5)
    expected = geometry.to_lps(cpu.vertices).astype(np.float32)
    faces = cpu.faces[:, ::-1] if flip else cpu.faces
    verts, gfaces = marching_cubes_gpu(cupy.asarray(data), 299.5, geometry, flip)
    assert_same_mesh(verts, gfaces, expected, faces)
    # and within 1e-3 mm of the float64 truth
    truth = geometry.to_lps(cpu.vertices)
    assert np.abs(verts.get() - truth).max() < 1e-3


def test_single_slice_volume_maps_along_the_normal(cupy):
    data = np.full((1, 5, 6), 1000, np.int16)
    geometry = Geometry(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]), (0.8, 0.9),
                        np.array([[10.0, -20.0, 30.0]]))
    cpu = marching_cubes(data, 299.5)
    expected = geometry.to_lps(cpu.vertices).astype(np.float32)
    verts, faces = marching_cubes_gpu(cupy.asarray(data), 299.5, geometry)
    assert_same_mesh(verts, faces, expected, cpu.faces)


def test_smoothing_equals_the_cpu_bit_for_bit(cupy):
    rng = np.random.default_rng(3)
    data = rng.normal(0, 400, (23, 31, 37)).astype(np.int16)
    geometry = tilted_geometry(23, far=False)
    volume = vol.Volume(data, geometry, "CT", "HU")
    for sigma_mm in (0.3, 1.0, 2.7):
        cpu = vol.smooth(volume, sigma_mm).data
        gpu = gpu_volume.smooth(vol.Volume(cupy.asarray(data), geometry, "CT", "HU"),
                                sigma_mm).data.get()
        np.testing.assert_array_equal(gpu, cpu)


@pytest.mark.parametrize("keep,min_mm3,border", [("largest", 0, False), ("3", 0, False),
                                                 ("all", 5.0, False), ("all", 0, True),
                                                 ("2", 1.0, True)])
def test_islands_keep_the_same_parts(cupy, keep, min_mm3, border):
    rng = np.random.default_rng(11)
    data = np.where(rng.random((30, 34, 38)) < 0.08, 500, -500).astype(np.int16)
    data[5:9, 5:9, 5:9] = 500  # ties in size are broken in raster order, on both engines
    data[20:24, 20:24, 20:24] = 500
    cpu_data, cpu_report = vol.keep_parts(data, 0.5, keep, min_mm3, 0.7, border)
    gpu_data, gpu_report = gpu_volume.keep_parts(cupy.asarray(data), 0.5, keep, min_mm3, 0.7,
                                                 border)
    assert gpu_report == cpu_report
    np.testing.assert_array_equal(gpu_data.get(), cpu_data)


def test_packed_stl_equals_the_cpu_bytes(cupy):
    rng = np.random.default_rng(5)
    data = rng.normal(0, 300, (20, 24, 22)).astype(np.int16)
    geometry = tilted_geometry(20, far=True)
    verts, faces = marching_cubes_gpu(cupy.asarray(data), 299.5, geometry)
    packed = binary_stl_bytes_gpu(verts, faces)
    expected = binary_stl_bytes(Mesh(verts.get(), faces.get()))
    assert len(packed) == 84 + 50 * len(faces)
    assert bytes(packed) == expected.tobytes()


REAL_OPTIONS = {
    "plain": {},
    "smoothed, largest part": {"smooth_mm": 0.8, "keep": "largest"},
    "skin preset, cropped": {"preset": "skin", "crop": "40:400,60:420,:", "min_part_mm3": 50},
}


# HU presets apply to CT only
REAL_CASES = [(name, label) for name in REAL_SERIES for label in REAL_OPTIONS
              if name.startswith("ct") or "preset" not in REAL_OPTIONS[label]]


@pytest.mark.parametrize("name,label", REAL_CASES)
def test_real_series_give_the_same_stl_on_both_engines(cupy, shared_dicom, tmp_path, name,
                                                        label):
    options = dict(REAL_OPTIONS[label])
    if "preset" not in options:
        options["level"] = REAL_SERIES[name]  # None: the automatic level
    results = {}
    for backend in ("cpu", "gpu"):
        out = tmp_path / f"{backend}.stl"
        results[backend] = convert([shared_dicom / name], out,
                                   Options(backend=backend, **options))
    assert results["gpu"].backend == "gpu"
    cpu_bytes = (tmp_path / "cpu.stl").read_bytes()
    gpu_bytes = (tmp_path / "gpu.stl").read_bytes()
    assert results["gpu"].report.triangles == results["cpu"].report.triangles > 100
    assert gpu_bytes == cpu_bytes


def test_a_volume_over_the_memory_budget_runs_in_slabs(cupy, shared_dicom, tmp_path, caplog):
    name = "ct-phantom-tilt-neg"
    options = {"level": 300.0, "smooth_mm": 0.5, "keep": "largest"}
    convert([shared_dicom / name], tmp_path / "cpu.stl", Options(backend="cpu", **options))
    # 512 x 512 x 54: a 10 MB budget holds 8 smoothed float32 slices at a time
    with caplog.at_level("INFO"):
        result = convert([shared_dicom / name], tmp_path / "gpu.stl",
                         Options(backend="gpu", gpu_memory_budget=10 * 2**20, **options))
    assert "marching cubes in slabs" in caplog.text
    assert result.backend == "gpu"
    assert (tmp_path / "gpu.stl").read_bytes() == (tmp_path / "cpu.stl").read_bytes()


def test_meshes_from_the_gpu_are_closed(cupy, shared_dicom, tmp_path):
    result = convert([shared_dicom / "ct-phantom-head-1mm"], tmp_path / "m.stl",
                     Options(backend="gpu", level=300.0))
    assert result.report.watertight
    import trimesh

    mesh = trimesh.load(tmp_path / "m.stl")
    assert edge_check(mesh.faces, len(mesh.vertices)) == (True, True)
    assert mesh.volume > 0


def test_auto_picks_the_gpu_and_warm_up_reports_it(cupy):
    from gpu_worker.engines import resolve_backend

    assert resolve_backend("auto").name == "gpu"
    info = GpuEngine().warm_up()  # what the RQ worker's warm_up() adds for a GPU
    assert info["device"] and info["seconds"] < 60
    memory = gpu_device.memory_in_use()
    assert memory["device_total_bytes"] > memory["device_free_bytes"] > 0
    assert memory["pool_held_bytes"] >= memory["pool_used_bytes"] >= 0
