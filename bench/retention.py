"""Benchmark the scheduler's retention pass on a real redis-server and database.

    python bench/retention.py [--jobs 2000] [--ip-rows 100000] [--database URL] --json out.json

It makes ``--jobs`` jobs the way the web does (upload folder, row, RQ entry), and
``--ip-rows`` IP log rows, all past their deadlines, then times one scheduler pass that
deletes them (files, rows, Redis entries), the gauges of a pass with that many rows, and a
pass with nothing to do. SQLite in a temporary folder unless ``--database`` names another
(a PostgreSQL database there is emptied first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

from common import emit_json
from sqlalchemy import insert

from dicomstl import jobs
from dicomstl.db import Base, IpLogEntry, engine_for, migrate, session_scope, utcnow
from dicomstl.queue import start_embedded_redis
from dicomstl.settings import load_settings
from scheduler import metrics
from scheduler.main import Scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--ip-rows", type=int, default=100_000)
    parser.add_argument("--database", help="a database URL (default: SQLite in a temp folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis, redis_url = start_embedded_redis(folder)
        try:
            results = run(folder, redis_url, args)
        finally:
            redis.terminate()
    results["machine"] = {"python": platform.python_version(), "cpu": platform.processor()
                          or platform.machine()}
    emit_json(results, args.json)


def run(folder: Path, redis_url: str, args) -> dict:
    env = {"DICOMSTL_DATA_DIR": str(folder / "var"), "REDIS_URL": redis_url,
           "DICOMSTL_SECRET_KEY": "bench"}
    if args.database:
        env["DATABASE_URL"] = args.database
    settings = load_settings(env)
    if args.database:
        Base.metadata.drop_all(engine_for(args.database))
        with engine_for(args.database).begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    migrate(settings.database_url)
    start = time.perf_counter()
    for n in range(args.jobs):
        part = settings.incoming_dir / f"part-{n}"
        part.write_bytes(b"\0" * 4096)
        jobs.create_job(settings, "key:1", {"preset": "bone"}, [part], "bulk")
    made_s = time.perf_counter() - start
    old = utcnow() - dt.timedelta(days=31)
    with session_scope(settings.database_url) as session:
        session.execute(insert(IpLogEntry), [
            {"ip": "203.0.113.1", "kind": "api", "route": "/api/v1/jobs", "created_at": old}
            for _ in range(args.ip_rows)])
    later = utcnow() + dt.timedelta(hours=1, minutes=1)
    standby_start = time.perf_counter()
    metrics.observe(settings, later, leading=False)
    observe_full_s = time.perf_counter() - standby_start
    scheduler = Scheduler(settings, clock=lambda: later)
    start = time.perf_counter()
    counts = scheduler.run_pass()
    sweep_s = time.perf_counter() - start
    assert counts["upload"] == args.jobs and counts["ip_log"] == args.ip_rows, counts
    start = time.perf_counter()
    idle = scheduler.run_pass()
    idle_s = time.perf_counter() - start
    scheduler.lease.release()
    return {
        "database": settings.database_url.split(":")[0],
        "jobs": args.jobs, "ip_rows": args.ip_rows,
        "make_jobs_s": round(made_s, 3),
        "observe_gauges_s": round(observe_full_s, 4),
        "pass_deleting_everything_s": round(sweep_s, 3),
        "per_job_ms": round(1000 * sweep_s / args.jobs, 3),
        "deleted": dict(counts),
        "idle_pass_s": round(idle_s, 4), "idle_deleted": dict(idle),
    }


if __name__ == "__main__":
    main()
