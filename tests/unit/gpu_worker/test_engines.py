"""Choosing an engine, and falling back from the GPU to the CPU: tested where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_worker.engines import resolve_backend


def test_auto_falls_back_to_the_cpu_and_gpu_says_why(monkeypatch, caplog):
    monkeypatch.setattr("gpu_worker.gpu.device.status", lambda: (False, "no device here"))
    with caplog.at_level("INFO"):
        assert resolve_backend("auto").name == "cpu"
    assert "using the CPU backend: no device here" in caplog.text
    with pytest.raises(Exception, match="--backend gpu is not available: no device here"):
        resolve_backend("gpu")


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

    def finish(decoded, stack, options, out, timer, engine, *rest):
        calls.append(engine.name)
        if engine.name == "gpu":
            raise OutOfMemoryError("Out of memory allocating 4,294,967,296 bytes")
        return real_finish(decoded, stack, options, out, timer, engine, *rest)

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

    def finish(decoded, stack, options, out, timer, engine, *rest):
        raise ValueError("a bug")

    monkeypatch.setattr(pipeline, "_finish", finish)
    with pytest.raises(ValueError, match="a bug"):
        pipeline.convert([_small_series(tmp_path / "s")], tmp_path / "m.stl",
                         pipeline.Options(level=300.0), engine=_no_device_gpu_engine(monkeypatch))
