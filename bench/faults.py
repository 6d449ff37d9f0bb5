"""Faults injected into the running service, with larger counts than the tests: every
scenario of ``tests/robustness/faults.py`` (worker SIGKILL, Redis restarted with and without
persistence, PostgreSQL connections cut, data disk full, scheduler SIGKILL mid-sweep, web
SIGKILL mid-upload), each on a service of real processes of its own.

    python bench/faults.py [--jobs 20] [--cut-s 30] [--only NAME ...] \
        --json bench/results/faults.json

Per scenario: jobs submitted, accepted, done, failed with a message, lost (must be 0),
whether the credits add up, files past their deadline (must be 0), how late the latest
deletion was (s), and the seconds from the end of the fault to a new job done. SQLite,
except the PostgreSQL cut (a new database on 127.0.0.1:5432, dropped afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import emit_json  # noqa: E402

from tests.dicom_factory import lps_grid, sphere_hu, write_series  # noqa: E402
from tests.robustness import faults  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SHARED = ROOT.parent / "shared" / "data" / "dicom"
SCENARIOS = ("worker_sigkill", "redis_restart_persistent", "redis_restart_volatile",
             "postgres_cut", "disk_full", "scheduler_sigkill_mid_sweep",
             "web_sigkill_mid_upload")


def synthetic_series(folder: Path) -> list[Path]:
    """The tests' small synthetic CT (12 slices of 24×24, a sphere)."""
    origins = [(0.0, 0.0, 1.5 * k) for k in range(12)]
    grid = lps_grid((12, 24, 24), (1, 0, 0), (0, 1, 0), (1.0, 1.0), origins)
    return sorted(write_series(folder, sphere_hu(grid, (12.0, 12.0, 8.0), 6.0, 1.0),
                               origins=origins))


@contextlib.contextmanager
def postgres_database():
    import psycopg

    name = "dicomstl_bench_" + secrets.token_hex(6)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_one(name: str, tmp: Path, series: list[Path], args) -> faults.Outcome:
    sqlite = f"sqlite:///{tmp / 'dicomstl.db'}"
    n = args.jobs
    if name == "worker_sigkill":
        # a real series: the synthetic one converts too fast to be caught running, thrice
        real = sorted((SHARED / "mr-enhanced-sag").iterdir())
        return faults.worker_sigkill(tmp, sqlite, real, n, kills=3)
    if name.startswith("redis_restart"):
        return faults.redis_restart(tmp, sqlite, series, n, persistent=name.endswith("persistent"))
    if name == "postgres_cut":
        with postgres_database() as url:
            return faults.postgres_cut(tmp, url, series, n, cut_s=args.cut_s)
    if name == "disk_full":
        return faults.disk_full(tmp, sqlite, series, n)
    if name == "scheduler_sigkill_mid_sweep":
        return faults.scheduler_sigkill(tmp, sqlite, series, n, kills=2)
    return faults.web_sigkill(tmp, sqlite, series, n, uploads=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--cut-s", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"jobs_per_scenario": args.jobs, "scenarios": {}}
    if args.only and args.json and args.json.exists():  # rerun some: keep the others
        results = json.loads(args.json.read_text())
    for name in args.only or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            folder = Path(tmp)
            series = synthetic_series(folder / "series")
            start = time.monotonic()
            outcome = run_one(name, folder, series, args)
            row = outcome.as_dict()
            row["wall_s"] = round(time.monotonic() - start, 1)
            results["scenarios"][name] = row
            print(f"{name:<30} submitted {outcome.submitted:3d} accepted {outcome.accepted:3d} "
                  f"done {outcome.done:3d} failed {outcome.failed_with_message:3d} lost "
                  f"{outcome.lost} refused {outcome.refused_with_message}"
                  f"+{outcome.refused_500}(500) "
                  f"credits_ok {outcome.credits_ok} past_deadline "
                  f"{outcome.files_past_deadline} recovery_s {outcome.recovery_s}", flush=True)
    results["machine"] = {"python": platform.python_version(), "cpu": platform.processor()
                          or platform.machine()}
    emit_json(results, args.json)


if __name__ == "__main__":
    main()
