"""What the benchmarks share: timing, a CT-like phantom, VTK's Flying Edges, JSON output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Seconds of the fastest of ``repeat`` runs after one warm-up run, and the last result."""
    result = fn()  # warm-up (and Numba compilation)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def median_of(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` (at least 3) runs after one warm-up run, and the last
    result."""
    result = fn()
    times = []
    for _ in range(max(3, repeat)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def goal_row(term: str, seconds: float, goal_s: float, before_s: float | None = None) -> dict:
    """One row of an issue's goal table, printed as it is measured."""
    met = seconds <= goal_s
    print(f"{term:<72} {seconds:8.3f} s  goal <= {goal_s:g} s  {'met' if met else 'NOT MET'}",
          flush=True)
    return {"term": term, "seconds": round(seconds, 4), "goal_s": goal_s, "met": met,
            "before_s": before_s}


def ct_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """CT-like int16 HU (K, J, I): air, a water-like ellipsoid, a bone shell, 25 HU noise."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = shape
    out = np.empty(shape, np.int16)
    y, x = np.ogrid[:nj, :ni]
    for k in range(nk):
        r = np.sqrt(((x - (ni - 1) / 2) / (0.42 * ni)) ** 2
                    + ((y - (nj - 1) / 2) / (0.38 * nj)) ** 2
                    + ((k - (nk - 1) / 2) / (0.45 * nk)) ** 2)
        s = np.where(r < 1.0, 40, -1000).astype(np.int16)
        s[(r > 0.9) & (r < 1.0)] = 1000
        s += rng.normal(0, 25, s.shape).astype(np.int16)
        out[k] = s
    return out


def vtk_flying_edges(volume: np.ndarray, level: float):
    """A callable running vtkFlyingEdges3D on all cores; None when VTK is missing."""
    try:
        from vtkmodules.util.numpy_support import numpy_to_vtk
        from vtkmodules.vtkCommonCore import vtkSMPTools
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D
    except ImportError:
        return None
    vtkSMPTools.SetBackend("STDThread")
    image = vtkImageData()
    k, j, i = volume.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_to_vtk(volume.ravel(), deep=False))
    fe = vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, level)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()

    def run():
        fe.Modified()
        fe.Update()
        return fe.GetOutput().GetNumberOfPolys()

    return run


def emit_json(results: dict, path: Path | None) -> None:
    """Print the results as JSON and, with a path, save them there too."""
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
