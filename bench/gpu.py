"""Benchmark the GPU engine stage by stage, against the CPU extractors, in one run.

    python bench/gpu.py --json bench/results/gpu-h100.json [--sizes 256,512,1024]
                        [--real ../shared/data/dicom/ct-phantom-head-1mm] [--dicom-slices 512]

For CT-like int16 phantoms (N x 512 x 512 slices; 256^3 for the small one), each GPU stage is
timed with CUDA events (median of ``--repeat`` after one warm-up): pinned upload, HU rescale,
Gaussian smoothing (sigma 0.5 mm), island removal (largest part), marching cubes (with the
LPS transform), STL packing, mesh download, and the whole GPU stage end to end. The same
volume's surface is extracted in the same run by the CPU reference (Numba, all cores),
scikit-image (lorensen, lewiner; N <= 512) and VTK's vtkFlyingEdges3D on all cores (STDThread),
when VTK is importable. Bandwidth figures compare bytes each stage must move with a measured
device-to-device copy. Then whole conversions: the largest real CT (GPU and CPU), a synthetic
uncompressed series of ``--dicom-slices`` slices written with pydicom, and decimation alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import best_of, ct_like, emit_json, vtk_flying_edges  # noqa: E402

from gpu_worker import volume as vol  # noqa: E402
from gpu_worker.decimation import decimate  # noqa: E402
from gpu_worker.decode import DecodedSeries  # noqa: E402
from gpu_worker.geometry import Geometry  # noqa: E402
from gpu_worker.gpu import volume as gpu_volume  # noqa: E402
from gpu_worker.gpu.engine import GpuEngine  # noqa: E402
from gpu_worker.gpu.marching import marching_cubes_gpu  # noqa: E402
from gpu_worker.gpu.stl import binary_stl_bytes_gpu  # noqa: E402
from gpu_worker.marching import marching_cubes  # noqa: E402
from gpu_worker.mesh import Mesh  # noqa: E402
from gpu_worker.pipeline import Options, convert  # noqa: E402

LEVEL = 299.5  # bone at 300 HU on int16 data


def axial_geometry(nk: int) -> Geometry:
    return Geometry(np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), (1.0, 1.0),
                    np.array([[-255.5, -255.5, float(z)] for z in range(nk)]))


def gpu_time(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``fn`` between CUDA events (after one warm-up), and its result."""
    import cupy

    result = fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        result = fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times)), result


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the practical HBM ceiling)."""
    import cupy

    a = cupy.ones(2**30 // 4, dtype=cupy.float32)
    b = cupy.empty_like(a)
    t, _ = gpu_time(lambda: b.__setitem__(Ellipsis, a), 10)
    return 2 * a.nbytes / t


def phantom_benchmark(shape: tuple[int, int, int], repeat: int, bandwidth: float,
                      competitors: bool) -> dict:
    import cupy
    import cupyx

    host = ct_like(shape)
    voxels = host.size
    geometry = axial_geometry(shape[0])
    pinned = cupyx.empty_like_pinned(host)
    pinned[...] = host
    out: dict = {"shape_kji": list(shape), "voxels": voxels, "bytes": host.nbytes}
    stages: dict = {}

    def stage(name: str, seconds: float, moved_bytes: float | None = None, **extra):
        entry = {"ms": round(seconds * 1e3, 3), "gvoxel_per_s": round(voxels / seconds / 1e9, 2)}
        if moved_bytes is not None:
            entry["bytes_moved"] = int(moved_bytes)
            entry["fraction_of_copy_bandwidth"] = round(moved_bytes / seconds / bandwidth, 3)
        stages[name] = {**entry, **extra}

    t, dev = gpu_time(lambda: cupy.asarray(pinned), repeat)
    stage("upload", t, host.nbytes, gbyte_per_s=round(host.nbytes / t / 1e9, 1))
    raw = dev + 1024  # stored int16 values (HU + 1024), RescaleIntercept -1024
    decoded = DecodedSeries(raw, np.ones(shape[0]), np.full(shape[0], -1024.0), geometry, "CT",
                            "", [])
    t, volume = gpu_time(lambda: vol.to_volume(decoded, cupy), repeat)
    stage("rescale", t, 4 * voxels)
    t, smoothed = gpu_time(lambda: gpu_volume.smooth(volume, 0.5), repeat)
    stage("smooth", t, 3 * 8 * voxels + 2 * voxels)
    t, (_kept, parts) = gpu_time(lambda: gpu_volume.keep_parts(smoothed.data, LEVEL, "largest",
                                                              0.0, 1.0), repeat)
    stage("islands", t, None, parts_found=parts.parts_found)
    data = volume.data
    t, (verts_i, faces_i) = gpu_time(lambda: marching_cubes_gpu(data, LEVEL), repeat)
    mesh_bytes = 12 * len(verts_i) + 12 * len(faces_i)
    stage("marching_cubes_index", t, 2 * data.nbytes + mesh_bytes, triangles=len(faces_i),
          vertices=len(verts_i))
    t, (verts, faces) = gpu_time(lambda: marching_cubes_gpu(data, LEVEL, geometry), repeat)
    stage("marching_cubes_lps", t, 2 * data.nbytes + mesh_bytes, triangles=len(faces))
    mc_ms = stages["marching_cubes_lps"]["ms"]
    t, packed = gpu_time(lambda: binary_stl_bytes_gpu(verts, faces), repeat)
    stage("stl_pack_and_download", t, len(packed), stl_bytes=len(packed))
    host_v = cupyx.empty_pinned(verts.shape, np.float32)
    host_f = cupyx.empty_pinned(faces.shape, np.int32)
    t, _ = gpu_time(lambda: (verts.get(out=host_v), faces.get(out=host_f)), repeat)
    stage("download_mesh", t, verts.nbytes + faces.nbytes)

    def whole():
        d = cupy.asarray(pinned)
        v = gpu_volume.smooth(vol.Volume(d, geometry, "CT", "HU"), 0.5)
        k, _ = gpu_volume.keep_parts(v.data, LEVEL, "largest", 0.0, 1.0)
        vv, ff = marching_cubes_gpu(k, LEVEL, geometry)
        return vv.get(), ff.get()

    t, _ = best_of(whole, max(2, repeat // 2))
    stage("whole_gpu_stage", t, None, note="upload, smooth, islands (largest), marching cubes "
          "with LPS, download; wall clock")
    out["gpu_stages"] = stages
    if competitors:
        cpu: dict = {}
        t, mesh = best_of(lambda: marching_cubes(host, LEVEL), 2)
        cpu["dicomstl_cpu_reference"] = {"ms": round(t * 1e3, 1), "triangles": len(mesh.faces)}
        fe = vtk_flying_edges(host, LEVEL)
        if fe is not None:
            t, n = best_of(fe, 2)
            cpu["vtk_flying_edges_all_cores"] = {"ms": round(t * 1e3, 1), "triangles": int(n)}
        else:
            cpu["vtk_flying_edges_all_cores"] = {"skipped": "VTK is not importable here"}
        if voxels <= 512**3:
            from skimage.measure import marching_cubes as sk_mc

            for method in ("lorensen", "lewiner"):
                t, res = best_of(lambda m=method: sk_mc(host, LEVEL, method=m), 1)
                cpu[f"skimage_{method}"] = {"ms": round(t * 1e3, 1), "triangles": len(res[1])}
        out["cpu_extractors"] = cpu
        out["speedup_marching_cubes"] = {
            name: round(entry["ms"] / mc_ms, 1) for name, entry in cpu.items() if "ms" in entry}
    return out


def conversion_benchmark(folder: Path, backend: str, **options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = convert([folder], Path(tmp) / "m.stl", Options(backend=backend, **options))
        wall = time.perf_counter() - start
    return {"backend": result.backend, "options": options, "wall_s": round(wall, 3),
            "triangles": result.report.triangles, "stl_bytes": result.bytes_written,
            "shape_kji": list(result.shape),
            "stages_s": {k: round(v, 4) for k, v in result.timings_s.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", default="256,512,1024",
                        help="phantom slice counts: 256 means 256^3, others N x 512 x 512")
    parser.add_argument("--real", type=Path,
                        default=ROOT.parent / "shared/data/dicom/ct-phantom-head-1mm")
    parser.add_argument("--dicom-slices", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import cupy

    info = GpuEngine().warm_up()
    results: dict = {
        "gpu": info["device"], "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(), "cupy": cupy.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "cpu_cores": os.cpu_count(), "warm_up_s": info["seconds"]}
    bandwidth = copy_bandwidth()
    results["device_copy_bandwidth_gbyte_per_s"] = round(bandwidth / 1e9, 1)
    results["phantoms"] = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        shape = (256, 256, 256) if n == 256 else (n, 512, 512)
        print(f"phantom {shape} ...", flush=True)
        results["phantoms"].append(phantom_benchmark(shape, args.repeat, bandwidth, True))
    if args.real.is_dir():
        print("real CT ...", flush=True)
        runs = {}
        for backend in ("gpu", "cpu"):
            conversion_benchmark(args.real, backend, level=300.0)  # warm caches
            runs[backend] = conversion_benchmark(args.real, backend, level=300.0)
        runs["gpu_smoothed_largest"] = conversion_benchmark(args.real, "gpu", level=300.0,
                                                            smooth_mm=0.5, keep="largest")
        results["real_ct"] = {"series": args.real.name, **runs}
    if args.dicom_slices:
        from tests.dicom_factory import write_series

        print(f"writing a {args.dicom_slices}-slice series ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            hu = ct_like((args.dicom_slices, 512, 512), seed=1)
            write_series(Path(tmp) / "series", hu, shuffle_names=False)
            del hu
            conversion_benchmark(Path(tmp) / "series", "gpu", level=300.0)  # page cache
            results["dicom_series_end_to_end"] = conversion_benchmark(
                Path(tmp) / "series", "gpu", level=300.0)
    if results["phantoms"]:
        print("decimation ...", flush=True)
        host = ct_like((256, 512, 512))
        verts, faces = marching_cubes_gpu(host, LEVEL, axial_geometry(256))
        mesh = Mesh(verts.get(), faces.get())
        start = time.perf_counter()
        out, warning = decimate(mesh, 0.9)
        results["decimation_cpu"] = {"triangles_in": len(mesh.faces),
                                     "triangles_out": len(out.faces), "warning": warning,
                                     "seconds": round(time.perf_counter() - start, 3)}
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
