"""Benchmark a whole conversion, and the surface stage against scikit-image and VTK.

    python bench/convert.py SERIES_DIR [--json OUT.json] [--synthetic 512]

Reports, in one run on one machine:
- the host-speed goal table (``goals``; the real head CT, ``SERIES_DIR``): the mesh check, a
  plain and a decimated whole conversion, decimation 1.5 M -> 300 k triangles, the first
  conversion in a new process (kernels cached) and the header read of a 512-file series,
  each the median of ``--repeat`` (>= 3) runs in a warm process, beside its goal;
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
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_of, ct_like, emit_json, goal_row, median_of, vtk_flying_edges

from gpu_worker import decimation, decode, dicom_headers
from gpu_worker import series as ser
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.marching import effective_level, marching_cubes
from gpu_worker.pipeline import Options, convert, inspect
from gpu_worker.sources import collect_sources
from gpu_worker.volume import keep_parts, to_volume

ROOT = Path(__file__).resolve().parents[1]

#: A new process converting the same series twice: (first, second) seconds.
FIRST_RUN = """
import json, sys, time
from dicomstl.options import Options
from gpu_worker.pipeline import convert
times = []
for _ in range(2):
    start = time.perf_counter()
    convert([sys.argv[1]], sys.argv[2], Options(level=300.0, printability=False))
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def head_meshes(series: Path) -> tuple:
    """The head CT's surface at 300 HU (all parts) and its bone's largest part."""
    found, stacks = inspect([series])
    volume = to_volume(decode.decode_series(found, ser.choose_series(stacks, "largest")))
    level = effective_level(volume.data, 300.0)
    engine = CpuEngine()
    whole = engine.iso_surface(volume.data, level, volume.geometry)
    largest, _ = keep_parts(volume.data, level, "largest", 0.0,
                            volume.geometry.voxel_volume_mm3)
    return whole, engine.iso_surface(largest, level, volume.geometry)


def goals(series: Path, repeat: int) -> dict:
    """The rows of the host-speed table (issue "Speed on the host"), medians, with goals."""
    import subprocess

    from tests.dicom_factory import write_series

    rows, engine = [], CpuEngine()
    whole, bone = head_meshes(series)
    t, report = median_of(lambda: engine.check(whole), repeat)
    rows.append(goal_row(f"mesh check, {report.triangles / 1e6:.1f} M triangles (head CT, "
                         "300 HU)", t, 0.08, 0.74))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.stl"
        # the goals predate the printability report: measured without it, and with it
        plain = Options(level=300.0, printability=False)
        t, _ = median_of(lambda: convert([series], out, plain), repeat)
        rows.append(goal_row("whole CPU conversion of the head CT, plain iso-surface", t, 0.6,
                             1.33))
        t, result = median_of(lambda: convert([series], out, Options(level=300.0)), repeat)
        extra_rows = [{"term": "the same with the printability report", "seconds": round(t, 4),
                       "printability_s": round(result.timings_s["printability"], 4)}]
        t, (small, warning) = median_of(
            lambda: decimation.decimate(bone, max_triangles=300_000), repeat)
        closed = engine.check(small).watertight and warning is None
        rows.append({**goal_row(f"decimation {len(bone.faces) / 1e6:.1f} M -> "
                                f"{len(small.faces) / 1e3:.0f} k, closed 2-manifold result",
                                t, 2.5, 20.0), "closed": closed,
                     "triangles_in": len(bone.faces), "triangles_out": len(small.faces)})
        bone_options = Options(preset="bone", keep="largest", max_triangles=300_000,
                               printability=False)
        t, result = median_of(lambda: convert([series], out, bone_options), repeat)
        rows.append({**goal_row("whole CPU conversion, --preset bone --keep largest "
                                "--max-triangles 300000", t, 4.0, 25.0),
                     "watertight": result.report.watertight, "warnings": result.warnings,
                     "stages_seconds": {k: round(v, 4) for k, v in result.timings_s.items()}})
        with_report = replace(bone_options, printability=True)
        t, result = median_of(lambda: convert([series], out, with_report), repeat)
        extra_rows.append({"term": "the same with the printability report",
                           "seconds": round(t, 4),
                           "printability_s": round(result.timings_s["printability"], 4)})
        extras = []
        for _ in range(max(3, repeat)):
            done = subprocess.run([sys.executable, "-c", FIRST_RUN, str(series), str(out)],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            first, second = json.loads(done.stdout.strip().splitlines()[-1])
            extras.append(first - second)
        rows.append(goal_row("first conversion in a new process after install (kernels "
                             "cached), extra", float(np.median(extras)), 1.0, 10.0))
        folder = Path(tmp) / "series512"
        write_series(folder, ct_like((512, 512, 512), seed=1), shuffle_names=False)
        sources = collect_sources([folder])
        t, found = median_of(lambda: dicom_headers.scan(sources), repeat)
        assert len(found.frames) == 512
        rows.append(goal_row("header read of a 512-file series", t, 0.2, 0.52))
    for row in extra_rows:
        print(f"  ({row['term']}: {row['seconds']:.3f} s, of which the report "
              f"{row['printability_s']:.3f} s)", flush=True)
    return {"rows": rows, "all_met": all(r["met"] for r in rows), "with_report": extra_rows}


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
    results["goals"] = goals(args.series, args.repeat)
    # Whole conversion (plain iso-surface), after one warm-up run for Numba's compilation.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.stl"
        t, result = median_of(
            lambda: convert([args.series], out, Options(level=args.level, series="largest",
                                                         printability=False)), args.repeat)
        results["convert"] = {"wall_seconds": t,
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
