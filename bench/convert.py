"""Benchmark a whole conversion, and the surface stage against scikit-image and VTK.

    python bench/convert.py SERIES_DIR [--json OUT.json] [--synthetic 512]

Reports, in one run on one machine:
- time per stage of ``gpu_worker.pipeline.convert`` (plain iso-surface: no smoothing, all
  parts, no decimation) and the process's peak resident memory;
- the series read (our scan + parallel decode) against pydicom's plain ``dcmread`` +
  ``pixel_array`` loop over the same files;
- marching cubes on the series' HU volume and on a synthetic CT-like int16 volume (N^3):
  ours, ``skimage.measure.marching_cubes`` (lorensen and lewiner) and VTK's
  ``vtkFlyingEdges3D`` on the STDThread backend with all cores. Best of ``--repeat`` runs
  after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_of, ct_like, emit_json, vtk_flying_edges

from gpu_worker import decode, dicom_headers
from gpu_worker import series as ser
from gpu_worker.marching import effective_level, marching_cubes
from gpu_worker.pipeline import Options, convert
from gpu_worker.sources import collect_sources
from gpu_worker.volume import to_volume


def plain_pydicom_read(files: list[Path]) -> float:
    import pydicom

    start = time.perf_counter()
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            if "PixelData" in ds:
                ds.pixel_array  # noqa: B018 - decoding is the point
        except Exception:
            pass
    return time.perf_counter() - start


def our_read(folder: Path) -> float:
    start = time.perf_counter()
    found = dicom_headers.scan(collect_sources([folder]))
    stack = ser.choose_series(ser.find_series(found), "largest")
    decode.decode_series(found, stack)
    return time.perf_counter() - start


def surface_benchmarks(volume: np.ndarray, level: float, repeat: int) -> dict:
    from skimage.measure import marching_cubes as sk_mc

    level = effective_level(volume, level)
    out: dict[str, dict] = {}
    t, mesh = best_of(lambda: marching_cubes(volume, level), repeat)
    out["dicomstl_cpu"] = {"seconds": t, "triangles": len(mesh.faces),
                           "gvoxel_per_s": volume.size / t / 1e9}
    t, fe_tris = best_of(vtk_flying_edges(volume, level), repeat)
    out["vtk_flying_edges_stdthread"] = {"seconds": t, "triangles": int(fe_tris)}
    for method in ("lorensen", "lewiner"):
        t, res = best_of(lambda m=method: sk_mc(volume, level, method=m), max(1, repeat // 2))
        out[f"skimage_{method}"] = {"seconds": t, "triangles": len(res[1])}
    ours = out["dicomstl_cpu"]["seconds"]
    out["speedup_vs_skimage_lorensen"] = out["skimage_lorensen"]["seconds"] / ours
    out["ratio_to_flying_edges"] = ours / out["vtk_flying_edges_stdthread"]["seconds"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", type=Path)
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--level", type=float, default=300.0, help="HU (default: bone, 300)")
    parser.add_argument("--synthetic", type=int, default=512, help="N for the N^3 volume")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    files = sorted(p for p in args.series.rglob("*") if p.is_file())
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version()},
        "series": args.series.name, "files": len(files), "level": args.level,
    }
    # Whole conversion (plain iso-surface), after one warm-up run for Numba's compilation.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.stl"
        convert([args.series], out, Options(level=args.level, series="largest"))
        start = time.perf_counter()
        result = convert([args.series], out, Options(level=args.level, series="largest"))
        results["convert"] = {"wall_seconds": time.perf_counter() - start,
                              "stages_seconds": result.timings_s,
                              "triangles": result.report.triangles,
                              "volume_shape_kji": list(result.shape),
                              "stl_bytes": result.bytes_written}
    results["read"] = {"plain_pydicom_loop_seconds": min(plain_pydicom_read(files)
                                                         for _ in range(2)),
                       "dicomstl_scan_and_decode_seconds": min(our_read(args.series)
                                                               for _ in range(2))}
    found = dicom_headers.scan(collect_sources([args.series]))
    stack = ser.choose_series(ser.find_series(found), "largest")
    volume = to_volume(decode.decode_series(found, stack)).data
    results["surface_real"] = {"shape_kji": list(volume.shape), "dtype": str(volume.dtype),
                               **surface_benchmarks(volume, args.level, args.repeat)}
    if args.synthetic:
        synthetic = ct_like((args.synthetic,) * 3)
        results["surface_synthetic"] = {"shape_kji": list(synthetic.shape), "dtype": "int16",
                                        **surface_benchmarks(synthetic, args.level,
                                                             args.repeat)}
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
