"""The GPU engine's host-side logic, tested where there is no GPU: tables, slab plans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from gpu_worker import volume as vol
from gpu_worker.engines import resolve_backend
from gpu_worker.geometry import Geometry
from gpu_worker.gpu.kernels import tables
from gpu_worker.gpu.marching import plan_slabs, slab_slices_for, transform_arrays
from gpu_worker.marching import TABLES


def test_the_checked_in_cuda_tables_are_the_cpu_tables():
    assert tables.HEADER_PATH.read_text() == tables.render()
    text = tables.render()
    # spot checks against the CPU arrays: case 1 (corner 0 outside) is one triangle 0, 8, 3
    assert TABLES["tri"][1][:3].tolist() == [0, 8, 3]
    assert "__constant__ signed char MC_TRI[256][16]" in text
    assert "__constant__ unsigned char MC_EDGE_AXIS[12] = {0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2};" \
        in text


@pytest.mark.parametrize("n_slices", [1, 2, 5, 54, 140])
@pytest.mark.parametrize("slab", [None, 1, 2, 3, 7, 1000])
def test_slab_plans_cover_every_row_plane_once_with_the_slices_each_pass_reads(n_slices, slab):
    slabs = plan_slabs(n_slices, slab)
    planes = [a for s in slabs for a in range(*s.rows)]
    assert planes == list(range(n_slices + 1))  # padded row planes 0..K, each once, in order
    for s in slabs:
        a0, a1 = s.rows
        # counting row a reads slices a-1 and a; emitting also reads a+1 (clipped to the volume)
        assert s.count_slices == (max(a0 - 1, 0), min(a1, n_slices))
        assert s.emit_slices == (max(a0 - 1, 0), min(a1 + 1, n_slices))
    for left, right in itertools.pairwise(slabs):
        # slabs share one slice for counting, two for emitting (fewer at the volume's ends)
        assert 0 <= left.count_slices[1] - right.count_slices[0] <= 1
        assert 0 <= left.emit_slices[1] - right.emit_slices[0] <= 2


def test_slab_height_follows_the_budget():
    assert slab_slices_for((140, 512, 512), 2, 10**9) is None
    assert slab_slices_for((140, 512, 512), 2, 10 * 2**20) == 18  # 20 slices, minus 2 halo
    assert slab_slices_for((140, 512, 512), 4, 1) == 1


def test_transform_arrays_are_the_geometry_numbers():
    col = np.array([0.0, 0.948, -0.317])
    origins = np.array([[-120.3, -80.7 + 0.31 * s, 40.2 + s] for s in (0.0, 1.2, 2.9, 4.0)])
    geometry = Geometry(np.array([1.0, 0.0, 0.0]), col / np.linalg.norm(col), (0.45, 0.48),
                        origins)
    xf, origins = transform_arrays(geometry)
    assert xf.dtype == np.float64 and xf.shape == (9,)
    np.testing.assert_array_equal(xf[:3], geometry.row_dir * geometry.spacing_ij[0])
    np.testing.assert_array_equal(xf[3:6], geometry.col_dir * geometry.spacing_ij[1])
    np.testing.assert_array_equal(xf[6:], geometry.normal)
    assert origins.flags.c_contiguous and origins.shape == (len(geometry.origins), 3)


def test_cpu_smoothing_is_scipys_gaussian_filter_exactly():
    rng = np.random.default_rng(2)
    data = rng.normal(0, 300, (12, 15, 18)).astype(np.float32)
    sigmas = (1.7, 0.9, 2.2)
    expected = ndimage.gaussian_filter(data, sigmas, mode="nearest")
    for axis, sigma in enumerate(sigmas):
        data = ndimage.correlate1d(data, vol.gaussian_weights(sigma), axis=axis,
                                   output=np.float32, mode="nearest")
    np.testing.assert_array_equal(data, expected)


def test_equal_sized_parts_are_kept_in_raster_order():
    sizes = np.array([0, 5, 9, 5, 9, 1])
    kept, report = vol.choose_parts(sizes, np.array([], np.int64), "3", 0.0, 1.0)
    assert kept.tolist() == [False, True, True, False, True, False]  # 9 (2), 9 (4), 5 (1)
    assert report.parts_kept == 3 and report.voxels_kept == 23


def test_auto_falls_back_to_the_cpu_and_gpu_says_why(monkeypatch, caplog):
    monkeypatch.setattr("gpu_worker.gpu.device.status", lambda: (False, "no device here"))
    with caplog.at_level("INFO"):
        assert resolve_backend("auto").name == "cpu"
    assert "using the CPU backend: no device here" in caplog.text
    with pytest.raises(Exception, match="--backend gpu is not available: no device here"):
        resolve_backend("gpu")


def test_the_gpu_memory_budget_goes_from_the_settings_to_the_pipeline(tmp_path):
    from dicomstl.options import Options, to_pipeline
    from dicomstl.settings import load_settings

    settings = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path),
                              "DICOMSTL_GPU_MEMORY_BUDGET": str(6 * 2**30)})
    options = to_pipeline({"level": 300}, settings.backend, settings.gpu_memory_budget)
    assert options.gpu_memory_budget == 6 * 2**30 and options.level == 300
    with pytest.raises(Exception, match="GPU memory budget cannot be negative"):
        Options(gpu_memory_budget=-1).validate()


def _small_series(folder):
    from tests.dicom_factory import write_series

    hu = np.full((8, 16, 16), -1000.0)
    hu[2:6, 4:12, 4:12] = 1000.0
    write_series(folder, hu)
    return folder


def _no_device_gpu_engine(monkeypatch):
    """The GPU engine on this machine without CuPy: its device calls answer as a GPU would
    (``is_out_of_memory`` recognises CuPy's error by its class name)."""
    from gpu_worker.gpu import device
    from gpu_worker.gpu.engine import GpuEngine

    monkeypatch.setattr(device, "memory_budget", lambda requested=0: 2**30)
    monkeypatch.setattr(device, "is_out_of_memory",
                        lambda exc: type(exc).__name__ == "OutOfMemoryError")
    return GpuEngine()


def test_a_gpu_out_of_memory_error_converts_on_the_cpu(monkeypatch, tmp_path, caplog):
    from gpu_worker import pipeline
    from gpu_worker.gpu import device

    class OutOfMemoryError(MemoryError):  # cupy.cuda.memory.OutOfMemoryError's name
        pass

    calls = []
    real_finish = pipeline._finish

    def finish(decoded, stack, options, out, timer, engine):
        calls.append(engine.name)
        if engine.name == "gpu":
            raise OutOfMemoryError("Out of memory allocating 4,294,967,296 bytes")
        return real_finish(decoded, stack, options, out, timer, engine)

    monkeypatch.setattr(pipeline, "_finish", finish)
    gpu = _no_device_gpu_engine(monkeypatch)
    monkeypatch.setattr(device, "release_memory", lambda: calls.append("released"))
    with caplog.at_level("WARNING"):
        result = pipeline.convert([_small_series(tmp_path / "s")], tmp_path / "m.stl",
                                  pipeline.Options(level=300.0), engine=gpu)
    assert calls == ["gpu", "released", "cpu"]
    assert result.backend == "cpu" and result.report.watertight
    assert (tmp_path / "m.stl").stat().st_size == 84 + 50 * result.report.triangles
    assert "the GPU ran out of memory; converting on the CPU instead" in caplog.text


def test_other_gpu_errors_are_not_hidden_by_the_fallback(monkeypatch, tmp_path):
    from gpu_worker import pipeline

    def finish(decoded, stack, options, out, timer, engine):
        raise ValueError("a bug")

    monkeypatch.setattr(pipeline, "_finish", finish)
    with pytest.raises(ValueError, match="a bug"):
        pipeline.convert([_small_series(tmp_path / "s")], tmp_path / "m.stl",
                         pipeline.Options(level=300.0), engine=_no_device_gpu_engine(monkeypatch))
