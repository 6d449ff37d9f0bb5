"""Benchmark the header read of a large series: pydicom for every file against the fast reader.

    python bench/series_read.py [--json OUT.json] [--slices 512] [--repeat 5]

Writes a CT-like series of ``--slices`` uncompressed 512x512 files (explicit VR little
endian, as ``tests.dicom_factory.write_series`` writes them) to a temporary folder, then
times ``gpu_worker.dicom_headers.scan`` on it in one warm process: ``fast=False`` (pydicom's
``dcmread`` for every file, as before the fast reader) and the default (the fast reader, with
pydicom for anything unusual). Median of ``--repeat`` runs after one warm-up run each, page
cache warm; the goal (``GOAL_S``, for 512 files on a 2-core machine) is written beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ct_like, emit_json

from gpu_worker import dicom_headers
from gpu_worker.sources import collect_sources
from tests.dicom_factory import write_series

#: Seconds for the header read of 512 files (the issue's goal, 2 cores).
GOAL_S = 0.2


def timed(fn, repeat: int) -> dict:
    """Median and every run's seconds, after one warm-up run."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_seconds": round(statistics.median(runs), 4),
            "runs_seconds": [round(t, 4) for t in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="runs per reader (at least 3)")
    args = parser.parse_args()
    repeat = max(3, args.repeat)

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        print(f"writing a {args.slices}-file series ...", file=sys.stderr, flush=True)
        write_series(folder, ct_like((args.slices, 512, 512), seed=1), shuffle_names=False)
        sources = collect_sources([folder])
        old = dicom_headers.scan(sources, fast=False)
        new = dicom_headers.scan(sources)
        results["series"] = {"files": len(sources), "slice": [512, 512],
                             "transfer_syntax": "explicit VR little endian",
                             "frames": len(new.frames),
                             "frames_identical": new.frames == old.frames
                             and (new.not_dicom, new.not_image)
                             == (old.not_dicom, old.not_image),
                             "read_by_fast_reader": sum(
                                 dicom_headers._fast_frames(s, 0) is not None
                                 for s in sources)}
        results["pydicom_every_file"] = timed(lambda: dicom_headers.scan(sources, fast=False),
                                              repeat)
        results["fast_reader"] = timed(lambda: dicom_headers.scan(sources), repeat)
    measured = results["fast_reader"]["median_seconds"]
    results["goal_seconds"] = GOAL_S
    results["meets_goal"] = measured <= GOAL_S if args.slices == 512 else None
    results["speedup"] = round(results["pydicom_every_file"]["median_seconds"] / measured, 2)
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
