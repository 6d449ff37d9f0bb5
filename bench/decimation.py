"""Benchmark mesh decimators side by side on real iso-surfaces: speed, memory, topology, error.

    python bench/decimation.py [--json OUT.json] [--series head tilt knee] [--repeat 3]

The meshes are the conversion's own surfaces before decimation (``real_mesh``: the stages of
``gpu_worker.pipeline._finish`` up to the iso-surface): the bone (300 HU, largest part) of
ct-phantom-head-1mm and of ct-phantom-tilt-neg, and mr-knee-t1-j2k at level 90 (largest
part; noisy MR, many small cavities). Targets: remove 90 %, remove 80 %, a budget of
100 000 triangles, and the pipeline's 300 000.

Each decimator runs in its own fresh process (``--worker``), so its peak resident memory
(``ru_maxrss``) is its own: the JSON gives that peak and its growth over the resident size
just before the first run (mesh loaded, library imported). Seconds: the fastest of
``--repeat`` runs after a first one (the first alone when it took over 5 s); ``deterministic``
says whether those runs gave the same arrays. In the parent process, for each result:
``gpu_worker.mesh.topology`` (closed, oriented, pinched vertices), the relative error of the
enclosed volume, and surface distances both ways -- 100 000 area-weighted random points on
one surface, their exact point-to-triangle distance to the other (VTK's
vtkImplicitPolyDataDistance) -- and whether admesh finds nothing to repair and PrusaSlicer's
``--info`` says ``manifold = yes`` for the binary STL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dicom"
#: name: (series folder, options for dicomstl.options.Options)
SERIES = {
    "head": ("ct-phantom-head-1mm", {"preset": "bone", "keep": "largest"}),
    "tilt": ("ct-phantom-tilt-neg", {"preset": "bone", "keep": "largest"}),
    "knee": ("mr-knee-t1-j2k", {"level": 90.0, "keep": "largest"}),
}
TARGETS = {"remove_90pct": ("ratio", 0.9), "remove_80pct": ("ratio", 0.8),
           "budget_100k": ("max_triangles", 100_000),
           "budget_300k": ("max_triangles", 300_000)}
METHODS = ("dicomstl", "fast_simplification", "pyfqmr", "meshoptimizer", "meshlib", "open3d",
           "pymeshlab_preservetopology", "vtk_quadric")
SAMPLES = 100_000
SLOW_S = 5.0
TEXT = {"capture_output": True, "text": True, "errors": "replace"}


def real_mesh(folder: Path, options):
    """The conversion's iso-surface of a series, before decimation (indexed, LPS mm)."""
    from gpu_worker import decode, pipeline
    from gpu_worker import series as ser
    from gpu_worker import volume as vol
    from gpu_worker.cpu_engine import CpuEngine
    from gpu_worker.marching import effective_level

    engine = CpuEngine()
    found, stacks = pipeline.inspect([folder])
    stack = ser.choose_series(stacks, options.series)
    volume = vol.to_volume(decode.decode_series(found, stack, options.time_point))
    level, invert, _ = pipeline.choose_level(volume, options, engine)
    data, oriented_level = vol.oriented(volume.data, level, invert)
    threshold = effective_level(data, oriented_level)
    data, _ = engine.keep_parts(data, threshold, options.keep, options.min_part_mm3,
                                volume.geometry.voxel_volume_mm3, drop_in_plane_border=invert)
    return engine.iso_surface(data, threshold, volume.geometry)


# --- the decimators: (vertices float32 (V, 3), faces int32 (F, 3), target) -> (V', F') ---

def run_dicomstl(v, f, target):
    from gpu_worker.decimation import decimate
    from gpu_worker.mesh import Mesh

    out, warning = decimate(Mesh(v, f), max_triangles=target)
    if warning:
        raise RuntimeError(warning)
    return out.vertices, out.faces


def run_fast_simplification(v, f, target):
    import fast_simplification

    return fast_simplification.simplify(v, f, target_count=target)


def run_pyfqmr(v, f, target):
    import pyfqmr

    s = pyfqmr.Simplify()
    s.setMesh(v, f)
    s.simplify_mesh(target_count=target, aggressiveness=7, preserve_border=True, verbose=False)
    vo, fo, _normals = s.getMesh()
    return vo, fo


def run_meshoptimizer(v, f, target):
    import meshoptimizer

    indices = f.astype(np.uint32).ravel()
    dest = np.zeros_like(indices)
    # target_error 1.0 (relative to the mesh's extent): no error limit, only the count
    n = meshoptimizer.simplify(dest, indices, np.ascontiguousarray(v, np.float32),
                               target_index_count=3 * target, target_error=1.0)
    faces = dest[:n].reshape(-1, 3)
    used, inverse = np.unique(faces, return_inverse=True)  # it keeps every vertex: compact
    return v[used], inverse.reshape(-1, 3)


def run_meshlib(v, f, target):
    from meshlib import mrmeshnumpy, mrmeshpy

    mesh = mrmeshnumpy.meshFromFacesVerts(f, v)
    settings = mrmeshpy.DecimateSettings()
    settings.maxDeletedFaces = len(f) - target
    settings.maxError = 1e30
    settings.packMesh = True
    settings.subdivideParts = os.cpu_count() or 1  # its parallel mode (TBB)
    mrmeshpy.decimateMesh(mesh, settings)
    return mrmeshnumpy.getNumpyVerts(mesh), mrmeshnumpy.getNumpyFaces(mesh.topology)


def run_open3d(v, f, target):
    import open3d

    mesh = open3d.geometry.TriangleMesh(open3d.utility.Vector3dVector(v.astype(np.float64)),
                                        open3d.utility.Vector3iVector(f))
    out = mesh.simplify_quadric_decimation(target_number_of_triangles=target)
    return np.asarray(out.vertices), np.asarray(out.triangles)


def run_pymeshlab_preservetopology(v, f, target):
    import pymeshlab

    meshset = pymeshlab.MeshSet()
    meshset.add_mesh(pymeshlab.Mesh(v.astype(np.float64), f.astype(np.int32)))
    meshset.meshing_decimation_quadric_edge_collapse(targetfacenum=target, preservetopology=True)
    out = meshset.current_mesh()
    return out.vertex_matrix(), out.face_matrix()


def _polydata(v, f):
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(v, np.float64), deep=1))
    cells = vtkCellArray()
    cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(f) + 1, 3, dtype=np.int64),
                                          deep=1),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(f, np.int64).ravel(), deep=1))
    poly = vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    return poly


def run_vtk_quadric(v, f, target):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkFiltersCore import vtkQuadricDecimation

    q = vtkQuadricDecimation()
    q.SetInputData(_polydata(v, f))
    q.SetTargetReduction(1.0 - target / len(f))
    q.VolumePreservationOn()
    q.Update()
    out = q.GetOutput()
    return (vtk_to_numpy(out.GetPoints().GetData()),
            vtk_to_numpy(out.GetPolys().GetConnectivityArray()).reshape(-1, 3))


SETTINGS = {
    "dicomstl": "gpu_worker.decimation.decimate(max_triangles=target); Numba threads: all",
    "fast_simplification": "simplify(target_count=target), agg 7",
    "pyfqmr": "simplify_mesh(target_count, aggressiveness=7, preserve_border=True)",
    "meshoptimizer": "simplify(target_index_count=3*target, target_error=1.0, options=0); "
                     "keeps input positions",
    "meshlib": "decimateMesh(maxDeletedFaces=F-target, maxError=1e30, packMesh, "
               "subdivideParts=cpu_count)",
    "open3d": "TriangleMesh.simplify_quadric_decimation(target)",
    "pymeshlab_preservetopology": "meshing_decimation_quadric_edge_collapse(targetfacenum, "
                                  "preservetopology=True), other options default",
    "vtk_quadric": "vtkQuadricDecimation(SetTargetReduction, VolumePreservationOn)",
}


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process. Not ru_maxrss: Linux
    carries that over from the parent the worker was forked from."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(method: str, mesh_path: Path, target: int, out_path: Path, repeat: int) -> dict:
    """One decimator in this (fresh) process: times, memory, the result saved to out_path."""
    fn = globals()[f"run_{method}"]
    data = np.load(mesh_path)
    v, f = data["v"], data["f"]
    if method == "dicomstl":
        from gpu_worker import decimation  # noqa: F401 - imported (and compiled) untimed
    rss_before = _status_bytes("VmRSS")
    load = os.getloadavg()[0]  # other work on the machine slows the runs
    times, cpu, digests = [], [], []
    for i in range(1 + repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        vo, fo = fn(v, f, target)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        vo = np.ascontiguousarray(vo, np.float32)
        fo = np.ascontiguousarray(fo, np.int32)
        digests.append(hashlib.sha256(vo.tobytes() + fo.tobytes()).hexdigest())
        if i == 0 and times[0] > SLOW_S:
            break
    np.savez(out_path, v=vo, f=fo)
    timed = times[1:] or times
    best = times.index(min(timed))
    return {"seconds": times[best], "median_seconds": float(np.median(timed)),
            "cpu_seconds": cpu[best], "first_run_seconds": times[0], "runs": len(timed),
            "deterministic": (len(set(digests)) == 1) if len(digests) > 1 else None,
            "peak_rss_bytes": _status_bytes("VmHWM"), "rss_before_bytes": rss_before,
            "load_average_1min_before": load}


# --- quality measures, in the parent ---

def sample_surface(v, f, n, seed=0):
    """n points uniformly distributed over the surface (area-weighted triangle choice)."""
    rng = np.random.default_rng(seed)
    a, b, c = (v[f[:, k]].astype(np.float64) for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return ((1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri]
            + (s * r2)[:, None] * c[tri])


class SurfaceDistance:
    """Exact unsigned distance from points to a triangle mesh (VTK's cell locator)."""

    def __init__(self, v, f):
        from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance

        self.poly = _polydata(v, f)
        self.impl = vtkImplicitPolyDataDistance()
        self.impl.SetInput(self.poly)

    def __call__(self, points):
        from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
        from vtkmodules.vtkCommonCore import vtkDoubleArray

        out = vtkDoubleArray()
        self.impl.FunctionValue(numpy_to_vtk(np.ascontiguousarray(points), deep=1), out)
        return np.abs(vtk_to_numpy(out))


def admesh_accepts(stl: Path) -> dict:
    exe = shutil.which("admesh")
    if not exe:
        return {"accepted": None, "reason": "admesh not installed"}
    text = subprocess.run([exe, str(stl)], **TEXT, timeout=600).stdout
    counts = {}
    for field in ("Degenerate facets", "Edges fixed", "Facets removed", "Facets added",
                  "Facets reversed", "Backwards edges", "Normals fixed"):
        m = re.search(rf"{field}\s*:\s*(\d+)", text)
        counts[field] = int(m.group(1)) if m else None
    return {"accepted": all(c == 0 for c in counts.values()), "repairs": counts}


def prusaslicer_accepts(stl: Path) -> dict:
    exe = shutil.which("prusa-slicer")
    if not exe:
        return {"accepted": None, "reason": "prusa-slicer not installed"}
    run = subprocess.run([exe, "--info", str(stl)], **TEXT, timeout=600, cwd=stl.parent)
    manifold = re.search(r"manifold = (\w+)", run.stdout)
    return {"accepted": run.returncode == 0 and bool(manifold) and manifold.group(1) == "yes",
            "manifold": manifold.group(1) if manifold else None}


def quality(original, distance_to_original, vo, fo, tmp: Path, tools: bool) -> dict:
    from gpu_worker.mesh import Mesh, enclosed_volume_mm3, topology
    from gpu_worker.stl import write_mesh

    out = Mesh(np.ascontiguousarray(vo, np.float32), np.ascontiguousarray(fo, np.int32))
    topo = topology(out)
    result = {"triangles": len(fo), "vertices": len(vo), "closed": topo.closed,
              "oriented": topo.oriented, "watertight": topo.watertight,
              "boundary_edges": topo.boundary_edges,
              "non_manifold_edges": topo.non_manifold_edges,
              "pinched_vertices": getattr(topo, "pinched_vertices", None),
              "parts": topo.parts}
    v_in = enclosed_volume_mm3(original)
    result["volume_rel_error"] = (enclosed_volume_mm3(out) - v_in) / v_in
    lo, hi = original.vertices.min(0), original.vertices.max(0)
    result["bbox_max_shift_mm"] = float(max(np.abs(out.vertices.min(0) - lo).max(),
                                            np.abs(out.vertices.max(0) - hi).max()))
    d_out_to_in = distance_to_original(sample_surface(out.vertices, out.faces, SAMPLES, 1))
    d_in_to_out = SurfaceDistance(out.vertices, out.faces)(
        sample_surface(original.vertices, original.faces, SAMPLES, 2))
    result["distance_mm"] = {
        "decimated_to_input": {"mean": float(d_out_to_in.mean()), "max": float(d_out_to_in.max())},
        "input_to_decimated": {"mean": float(d_in_to_out.mean()), "max": float(d_in_to_out.max())},
        "symmetric_mean": float((d_out_to_in.mean() + d_in_to_out.mean()) / 2),
        "hausdorff_sampled": float(max(d_out_to_in.max(), d_in_to_out.max()))}
    if tools:
        stl = tmp / "out.stl"
        write_mesh(out, stl)
        result["admesh"] = admesh_accepts(stl)
        result["prusaslicer"] = prusaslicer_accepts(stl)
    return result


def available(method: str) -> str | None:
    """None when the method's library imports here, else why not."""
    module = {"dicomstl": "gpu_worker.decimation", "fast_simplification": "fast_simplification",
              "pyfqmr": "pyfqmr", "meshoptimizer": "meshoptimizer", "meshlib": "meshlib.mrmeshpy",
              "open3d": "open3d", "pymeshlab_preservetopology": "pymeshlab",
              "vtk_quadric": "vtkmodules.vtkFiltersCore"}[method]
    run = subprocess.run([sys.executable, "-c", f"import {module}"], **TEXT, timeout=300)
    return None if run.returncode == 0 else (run.stderr.strip().splitlines() or ["?"])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--series", nargs="+", default=list(SERIES), choices=list(SERIES))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-tools", action="store_true", help="skip admesh and PrusaSlicer")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "MESH_NPZ", "TARGET"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, mesh_path, target = args.worker
        print(json.dumps(worker(method, Path(mesh_path), int(target), args.worker_out,
                                args.repeat)))
        return 0

    from dicomstl.options import Options
    from gpu_worker.mesh import enclosed_volume_mm3, topology

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "method_settings": SETTINGS,
        "measures": {
            "seconds": f"fastest of --repeat {args.repeat} runs after a first one, in a fresh "
                       f"process per decimator and target (the first alone when over {SLOW_S} s)",
            "cpu_seconds": "process CPU time of that run (all threads): wall time on an idle "
                           "machine, for a single-threaded method, when others load it",
            "peak_rss_bytes": "VmHWM of that process; rss_growth_bytes: peak minus the "
                              "resident size just before the first run",
            "distance_mm": f"{SAMPLES} area-weighted random points on each surface, exact "
                           "point-to-triangle distance to the other (VTK "
                           "vtkImplicitPolyDataDistance); mean and max",
            "volume_rel_error": "(V_out - V_in) / V_in, signed enclosed volumes",
            "admesh": "admesh on the binary STL reports 0 for every repair counter",
            "prusaslicer": "prusa-slicer --info says manifold = yes"},
        "skipped": {}, "series": {}}
    methods = []
    for method in args.methods:
        reason = available(method)
        if reason:
            results["skipped"][method] = reason
        else:
            methods.append(method)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.series:
            folder, options = SERIES[name]
            mesh = real_mesh(SHARED / folder, Options(**options))
            n = len(mesh.faces)
            mesh_path = tmp / f"{name}.npz"
            np.savez(mesh_path, v=mesh.vertices, f=mesh.faces)
            topo = topology(mesh)
            entry = {"folder": folder, "options": options, "triangles": n,
                     "vertices": len(mesh.vertices), "watertight": topo.watertight,
                     "parts": topo.parts, "volume_mm3": enclosed_volume_mm3(mesh),
                     "targets": {}}
            results["series"][name] = entry
            distance_to_original = SurfaceDistance(mesh.vertices, mesh.faces)
            for target_name in args.targets:
                kind, value = TARGETS[target_name]
                target = int(value) if kind == "max_triangles" else round(n * (1 - value))
                per_method = {"target_triangles": target}
                entry["targets"][target_name] = per_method
                for method in methods:
                    out_path = tmp / "out.npz"
                    run = subprocess.run(
                        [sys.executable, __file__, "--worker", method, str(mesh_path),
                         str(target), "--worker-out", str(out_path),
                         "--repeat", str(args.repeat)], **TEXT, timeout=3600)
                    if run.returncode != 0:
                        per_method[method] = {"error": (run.stderr.strip().splitlines()
                                                        or [f"exit {run.returncode}"])[-1]}
                        print(f"{name} {target_name} {method}: failed", file=sys.stderr)
                        continue
                    record = json.loads(run.stdout.strip().splitlines()[-1])
                    record["rss_growth_bytes"] = (record["peak_rss_bytes"]
                                                  - record["rss_before_bytes"])
                    data = np.load(out_path)
                    record.update(quality(mesh, distance_to_original, data["v"], data["f"],
                                          tmp, not args.no_tools))
                    per_method[method] = record
                    print(f"{name} {target_name} {method}: {record['seconds']:.2f} s, "
                          f"{record['triangles']} triangles, watertight "
                          f"{record['watertight']}", file=sys.stderr)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
