"""Soak the running service: 16 API clients on loopback for ten minutes, then prove that it
held up. Good uploads (real shared series), broken ones (the shared broken files and
requests the API must refuse), status polls, downloads, unknown jobs and bad keys, in a
seeded mix; then the retention window is waited out.

    python bench/soak.py [--duration 600] [--clients 16] [--sample-s 10] [--warmup-s 60]
                         [--retention-s 60] [--seed 17] [--database-url URL] [--json PATH]

``tests/robustness/test_soak.py`` runs the 60 s version (2 s samples).

It starts ``dicomstl up`` (a fresh data folder, a free port, the embedded redis-server,
SQLite unless ``--database-url``), gives each client its own operator key (a clinic each;
the API's default rate limits stay on), runs the load, waits for every job to end, waits
out the retention window (``DICOMSTL_RESULT_TTL_S`` set to ``--retention-s``) and stops the
service. Every ``--sample-s`` it reads the resident memory (MiB, summed over the process
tree) and open file descriptors of the web app (gunicorn's master and workers), the worker,
the scheduler and Redis from /proc.

The JSON (``bench/results/soak.json``) holds requests by kind and status, request and job
latency percentiles (a job's from its ``created_at`` to its ``finished_at``, the server's
clock), the jobs' fates, the samples, each series' least-squares slope per minute after
the warm-up and its growth over that span, and what is left on disk. The exit status is 1
when an invariant fails:

- no unexpected answer: every request answers what its kind must (a 5xx, a connection
  error or a wrong 2xx/4xx is unexpected; 429 and the 410 of a model deleted on time are
  expected);
- no job lost: every accepted job ends ``done`` (the good series) or ``failed`` with a
  message (the broken ones) within ``--drain-s``;
- flat memory and descriptors: every process tree (web app, worker, scheduler), idle after
  the load, holds at most ``--max-idle-growth-mb`` more than idle before it, and at most
  ``--max-idle-fds`` more descriptors (less the clients' connections: a pool that reached
  its peak only later holds one or two more); and over a long run (at least 240 s of
  samples after ``--warmup-s``) the RSS of the web app and the scheduler rises by at most
  ``--max-rss-mb-per-min`` and their descriptors by at most ``--max-fds-per-min``
  (Theil-Sen slopes; least squares reported too). A leak of one upload's buffer per
  submission (over 1 MiB, 15 or more a minute here), of one descriptor per request
  (hundreds a minute) or per job (about 20) is far above them. The worker's RSS swings by
  a conversion's working set (~60 MiB) with every job, so its slope is only reported (a
  leak of 1 MiB a job is 280 MiB of idle growth over ten minutes);
- no process restarted (``up`` restarts a dying one: a crash must not hide), no traceback
  in the service's log;
- nothing left: no file under ``jobs/`` or ``incoming/`` of the data folder once the last
  model's deadline has passed (plus one sweep interval), and every job reads ``deleted``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from common import emit_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DICOM = ROOT.parent / "shared" / "data" / "dicom"
ROLES = ("web", "worker", "scheduler", "redis")
#: The processes whose memory and descriptors must stay flat (Redis holds the queue: its
#: memory follows the jobs alive, and is reported but not bounded).
FLAT_ROLES = ("web", "worker", "scheduler")
#: Seconds of samples after the warm-up from which the slopes are held to their bounds.
SLOPE_MIN_S = 240
#: Status codes each kind of request may answer; anything else is an unexpected error.
#: 429 (a key over its rate limit) is the limiter working, and is expected everywhere.
EXPECTED = {
    "submit_good": {201}, "submit_broken": {201}, "submit_refused": {400},
    "poll": {200}, "download": {200, 410}, "list": {200},
    "not_found": {404}, "unauthorised": {401},
}


@dataclass(frozen=True)
class Upload:
    """One upload the clients send: its files (name, bytes), options, and whether it is a
    good series (must end done) or a broken one (must end failed with a message)."""

    name: str
    files: tuple[tuple[str, bytes], ...]
    options: dict
    good: bool


def _read(paths: list[Path]) -> tuple[tuple[str, bytes], ...]:
    return tuple((f"{n:04d}", p.read_bytes()) for n, p in enumerate(paths))


def uploads() -> tuple[list[Upload], list[Upload]]:
    """(good, broken) uploads from the shared data, read once into memory (a few MB)."""
    ct = sorted((DICOM / "ct-phantom-head-1mm").glob("I*"), key=lambda p: int(p.name[1:]))
    good = [
        # MR enhanced multi-frame, 86x86x63, one file of 1.2 MB: about 0.3 s of work
        Upload("mr-enhanced-sag", _read([DICOM / "mr-enhanced-sag" / "0063.dcm"]),
               {"level": 200}, True),
        # 12 contiguous slices of the CT head phantom (512x512, 6 MB): about 1 s
        Upload("ct-head-12-slices", _read(ct[60:72]), {"preset": "bone",
                                                       "max_triangles": 50_000}, True),
        # the zipped JPEG 2000 knee, downsampled so it stays a modest job
        Upload("zip-mr-knee-t1", _read([DICOM / "zip-mr-knee-t1" / "knee-t1.zip"]),
               {"level": 90, "downsample": 2, "max_triangles": 50_000}, True),
    ]
    broken = [Upload(p.name, _read([p]), {}, False)
              for p in sorted((DICOM / "broken").iterdir())]
    broken += [Upload("ct-single-slice", _read(sorted((DICOM / "ct-single-slice").iterdir())),
                      {"preset": "bone"}, False)]
    return good, broken


#: Requests the API must refuse with a 400 (form fields, options): (name, form, files).
REFUSED = (
    ("options-not-json", {"options": "{level: 200"}, True),
    ("unknown-option", {"options": json.dumps({"levle": 200})}, True),
    ("level-out-of-range", {"options": json.dumps({"level": 1e12})}, True),
    ("no-files", {"options": "{}"}, False),
)


@dataclass
class JobRecord:
    upload: str
    good: bool
    client: int
    state: str = "queued"
    message: str | None = None
    created_at: float | None = None  # the server's times, Unix seconds
    finished_at: float | None = None
    downloaded: bool = False
    last_poll: float = 0.0


@dataclass
class Tally:
    """What every client saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)  # (kind, status) -> n
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    in_flight: int = 0
    downloads_bad: int = 0
    downloaded_bytes: int = 0

    def record(self, kind: str, status: int | str, seconds: float, detail: str = "") -> bool:
        """Count one answer; False (and kept for the report) when it is unexpected."""
        ok = status in EXPECTED[kind] or status == 429
        with self.lock:
            self.requests[(kind, status)] += 1
            self.latency_ms.setdefault(kind, []).append(1000 * seconds)
            if not ok and len(self.unexpected) < 50:
                self.unexpected.append(f"{kind}: {status} {detail}"[:300])
            elif not ok:
                self.unexpected.append("")  # counted, not kept
        return ok


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def stl_ok(body: bytes) -> bool:
    """Whether ``body`` is a whole binary STL: 84 bytes of header and count, 50 a triangle."""
    if len(body) < 84:
        return False
    (count,) = struct.unpack_from("<I", body, 80)
    return count > 0 and len(body) == 84 + 50 * count


class Client(threading.Thread):
    """One clinic: its own key and connection, a seeded mix of requests, at most
    ``per_client`` jobs of its own unfinished and ``cap`` of everyone's."""

    def __init__(self, n: int, url: str, key: str, tally: Tally, good: list[Upload],
                 broken: list[Upload], seed: int, stop_at: float, drain_until: float,
                 per_client: int, cap: int, poll_s: float):
        super().__init__(name=f"client-{n}", daemon=True)
        self.n, self.url, self.tally = n, url, tally
        self.good, self.broken = good, broken
        self.rng = random.Random(seed * 1000 + n)
        self.stop_at, self.drain_until = stop_at, drain_until
        self.per_client, self.cap, self.poll_s = per_client, cap, poll_s
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"
        self.mine: list[str] = []

    def call(self, kind: str, method: str, path: str, **kwargs) -> requests.Response | None:
        """One request, counted; None after a connection error (counted as unexpected)."""
        start = time.perf_counter()
        try:
            response = self.http.request(method, self.url + path, timeout=120, **kwargs)
        except requests.RequestException as exc:
            self.tally.record(kind, "connection", time.perf_counter() - start,
                              f"{type(exc).__name__}: {exc}")
            return None
        ok = self.tally.record(kind, response.status_code, time.perf_counter() - start,
                               response.text[:200] if response.status_code != 200 else "")
        if response.status_code == 429:
            time.sleep(min(5.0, float(response.headers.get("Retry-After", 1))))
        return response if ok else None

    def pending(self) -> list[str]:
        with self.tally.lock:
            return [j for j in self.mine if self.tally.jobs[j].state not in ("done", "failed",
                                                                             "deleted")]

    def submit(self, upload: Upload) -> None:
        with self.tally.lock:
            if self.tally.in_flight >= self.cap:
                return
            self.tally.in_flight += 1
        files = [("files", (name, data, "application/octet-stream"))
                 for name, data in upload.files]
        kind = "submit_good" if upload.good else "submit_broken"
        response = self.call(kind, "POST", "/api/v1/jobs", files=files,
                             data={"options": json.dumps(upload.options)})
        with self.tally.lock:
            if response is None or response.status_code != 201:
                self.tally.in_flight -= 1
                return
            job = response.json()
            self.tally.jobs[job["id"]] = JobRecord(upload.name, upload.good, self.n,
                                                   created_at=_unix(job["created_at"]))
            self.mine.append(job["id"])

    def poll(self, job_id: str) -> None:
        response = self.call("poll", "GET", f"/api/v1/jobs/{job_id}")
        with self.tally.lock:
            record = self.tally.jobs[job_id]
            record.last_poll = time.monotonic()
            if response is None:
                return
            job = response.json()
            if job["state"] in ("done", "failed", "deleted") and record.state not in (
                    "done", "failed", "deleted"):
                self.tally.in_flight -= 1
            record.state, record.message = job["state"], job["message"]
            record.finished_at = _unix(job["finished_at"])

    def download(self) -> None:
        with self.tally.lock:
            done = [j for j in self.mine if self.tally.jobs[j].state == "done"]
            fresh = [j for j in done if not self.tally.jobs[j].downloaded]
        if not fresh and (not done or self.rng.random() > 0.2):
            return
        job_id = fresh[0] if fresh else self.rng.choice(done)  # a repeat, now and then
        response = self.call("download", "GET", f"/api/v1/jobs/{job_id}/result")
        if response is None or response.status_code != 200:
            return
        with self.tally.lock:
            self.tally.jobs[job_id].downloaded = True
            self.tally.downloaded_bytes += len(response.content)
            self.tally.downloads_bad += not stl_ok(response.content)

    def refused(self) -> None:
        name, form, with_files = self.rng.choice(REFUSED)
        files = [("files", ("0000", b"DICM", "application/octet-stream"))] if with_files \
            else [("files", ("empty", b"", "application/octet-stream"))]
        response = self.call("submit_refused", "POST", "/api/v1/jobs", files=files, data=form)
        if response is not None and not response.json().get("error"):
            self.tally.record("submit_refused", f"400 without a message ({name})", 0.0)

    def step(self) -> None:
        """One action, drawn from the seeded mix."""
        due = [j for j in self.pending()
               if time.monotonic() - self.tally.jobs[j].last_poll >= self.poll_s]
        if due:
            self.poll(due[0])
            return
        action = self.rng.choices(
            ("good", "broken", "download", "refused", "list", "not_found", "unauthorised"),
            (40, 12, 25, 6, 5, 6, 6))[0]
        if action in ("good", "broken") and len(self.pending()) < self.per_client:
            self.submit(self.rng.choice(self.good if action == "good" else self.broken))
        elif action == "download":
            self.download()
        elif action == "refused":
            self.refused()
        elif action == "list":
            self.call("list", "GET", "/api/v1/jobs", params={"limit": 20})
        elif action == "not_found":
            self.call("not_found", "GET", f"/api/v1/jobs/{os.urandom(24).hex()}")
        elif action == "unauthorised":
            self.call("unauthorised", "GET", "/api/v1/jobs",
                      headers={"Authorization": "Bearer dsk_0000_not-a-key"})

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            self.step()
            time.sleep(self.rng.uniform(0.1, 0.5))  # think time: busy, not drowning
        while self.pending() and time.monotonic() < self.drain_until:
            for job_id in self.pending():
                self.poll(job_id)
            time.sleep(self.poll_s)
        self.http.close()


# Processes -----------------------------------------------------------------------------------

def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _tree(pid: int, parents: dict[int, int]) -> list[int]:
    out = [pid]
    for child, parent in parents.items():
        if parent == pid:
            out += _tree(child, parents)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def roles(up_pid: int) -> dict[str, list[int]]:
    """Each role's process tree (its top process first) under ``dicomstl up``."""
    parents = {int(p.name): _parent_of(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    found: dict[str, list[int]] = {role: [] for role in ROLES}
    for pid, parent in parents.items():
        if parent != up_pid:
            continue
        cmd = _cmdline(pid)
        role = ("redis" if "redis-server" in cmd else "worker" if "dicomstl_cli worker" in cmd
                else "scheduler" if "dicomstl_cli scheduler" in cmd else "web")
        found[role] = _tree(pid, parents)
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def client_socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets whose local port is ``port``: the web app's listening
    socket and its clients' connections (IPv4 loopback, /proc/net/tcp)."""
    inodes = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return inodes
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def own_fds(pid: int, connections: set[str]) -> int:
    """Open descriptors of a process other than the sockets in ``connections``: what it
    holds itself (files, pipes, its Redis and database connections)."""
    count = 0
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            count += not (target.startswith("socket:[") and target[8:-1] in connections)
    except OSError:
        pass
    return count


def fd_kinds(pids: list[int], connections: set[str]) -> dict[str, int]:
    """What the descriptors of ``pids`` point at: client connections, other sockets, pipes,
    files (by name, without the folder), anonymous inodes."""
    kinds: Counter = Counter()
    for pid in pids:
        try:
            entries = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        for fd in entries:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                kinds["client connection" if target[8:-1] in connections else "socket"] += 1
            elif target.startswith(("pipe:", "anon_inode:")):
                kinds[target.split(":")[0]] += 1
            else:
                kinds["file " + Path(target).name] += 1
    return dict(kinds.most_common())


def files_under(*folders: Path) -> int:
    """Files below the folders now (os.walk skips what the scheduler deletes meanwhile)."""
    return sum(len(files) for folder in folders for _dir, _subdirs, files in os.walk(folder))


class Sampler(threading.Thread):
    """Every ``every_s``: per role, RSS (MiB), open descriptors (all, and ``own_fds``: less
    the connections of clients to the web port, which come and go with the clients)
    summed over its process tree, its processes, and the files of the data folder's jobs/
    and incoming/."""

    def __init__(self, up_pid: int, data_dir: Path, every_s: float, t0: float, port: int):
        super().__init__(name="sampler", daemon=True)
        self.port = port
        self.up_pid, self.data_dir, self.every_s, self.t0 = up_pid, data_dir, every_s, t0
        self.samples: list[dict] = []
        self.phase = "load"
        self.tops: dict[str, set[int]] = {role: set() for role in ROLES}
        self.halt = threading.Event()

    def measure(self) -> dict[str, dict]:
        """Per role now: RSS (MiB), descriptors (all and ``own_fds``) and processes."""
        connections = client_socket_inodes(self.port)
        now = {}
        for role, pids in roles(self.up_pid).items():
            if pids:
                self.tops[role].add(pids[0])
            now[role] = {"rss_mb": round(sum(rss_mb(p) for p in pids), 1),
                         "fds": sum(open_fds(p) for p in pids),
                         "own_fds": sum(own_fds(p, connections) for p in pids),
                         "processes": len(pids)}
        return now

    def sample(self) -> None:
        now = {"t_s": round(time.monotonic() - self.t0, 2), "phase": self.phase,
               **self.measure()}
        now["data_files"] = files_under(self.data_dir / "jobs", self.data_dir / "incoming")
        self.samples.append(now)

    def fd_kinds(self) -> dict[str, dict[str, int]]:
        """Per role, what its descriptors point at now."""
        connections = client_socket_inodes(self.port)
        return {role: fd_kinds(pids, connections) for role, pids in roles(self.up_pid).items()}

    def run(self) -> None:
        while True:
            self.sample()
            if self.halt.wait(self.every_s):
                return


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of (seconds, value) points, per minute, and the growth of the fit
    over the span relative to its start value (0 with fewer than 3 points)."""
    if len(points) < 3:
        return 0.0, 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    first = my + b * (xs[0] - mx)
    growth = b * (xs[-1] - xs[0]) / first if first else 0.0
    return 60 * b, growth


def theil_sen(points: list[tuple[float, float]]) -> float:
    """The median of the slopes between every two (seconds, value) points, per minute: a
    trend that a sample landing inside a conversion's working set (the worker's RSS swings
    by ~60 MB a job) or a burst of connections does not tilt, as it tilts least squares."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
              for x2, y2 in points[i + 1:] if x2 != x1]
    return 60 * statistics.median(slopes) if slopes else 0.0


def trends(samples: list[dict], warmup_s: float) -> dict:
    """Per role and measure, over the load phase after the warm-up: the least-squares
    slope per minute and relative growth, the robust (Theil-Sen) slope per minute, the
    first, last and most seen value."""
    steady = [s for s in samples if s["phase"] == "load" and s["t_s"] >= warmup_s]
    out: dict = {"samples_used": len(steady)}
    if not steady:
        return out
    for role in ROLES:
        for measure, unit in (("rss_mb", "mb"), ("fds", "fds"), ("own_fds", "fds")):
            values = [(s["t_s"], s[role][measure]) for s in steady]
            per_min, growth = slope(values)
            out.setdefault(role, {})[measure] = {
                f"slope_{unit}_per_min": round(per_min, 3), "growth": round(growth, 4),
                f"robust_slope_{unit}_per_min": round(theil_sen(values), 3),
                "first": values[0][1], "last": values[-1][1],
                "max": max(v for _, v in values)}
    return out


def prime_pools(url: str, keys: list[str], good: list[Upload], rounds: int = 5) -> None:
    """Fill the web app's Redis and database connection pools and its threads' buffers
    before the clock starts: rounds of more concurrent requests than it has threads (they
    grow to its peak concurrency, which a random load reaches only bit by bit), lists and
    whole uploads refused after their bodies were read (options that are not JSON)."""
    from concurrent.futures import ThreadPoolExecutor

    def get(key: str) -> None:
        requests.get(url + "/api/v1/jobs", timeout=60,
                     headers={"Authorization": f"Bearer {key}"}).raise_for_status()

    def refused_upload(job: tuple[str, Upload]) -> None:
        key, upload = job
        files = [("files", (name, data, "application/octet-stream"))
                 for name, data in upload.files]
        r = requests.post(url + "/api/v1/jobs", files=files, data={"options": "{not json"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=120)
        if r.status_code != 400:
            raise RuntimeError(f"a priming upload was answered {r.status_code}, not 400")

    with ThreadPoolExecutor(2 * len(keys)) as pool:
        for n in range(rounds):
            list(pool.map(get, keys * 2))
            list(pool.map(refused_upload, [(key, good[n % len(good)]) for key in keys]))


# The run ------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)

    return {"n": len(ordered), "p50": at(50), "p95": at(95), "p99": at(99),
            "max": round(ordered[-1], 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(data_dir: Path, database_url: str | None, retention_s: int,
                  sweep_s: float, log: Path) -> tuple[subprocess.Popen, str]:
    """``dicomstl up`` on a free loopback port, once it answers; (process, URL)."""
    port = _free_port()
    env = {**os.environ, "DICOMSTL_DATA_DIR": str(data_dir), "DICOMSTL_PORT": str(port),
           "DICOMSTL_HOST": "127.0.0.1", "DICOMSTL_RESULT_TTL_S": str(retention_s),
           "DICOMSTL_SWEEP_INTERVAL_S": str(sweep_s),
           # no metrics ports: benches and tests may run side by side
           "DICOMSTL_WEB_METRICS_PORT": "0", "DICOMSTL_WORKER_METRICS_PORT": "0",
           "DICOMSTL_SCHEDULER_METRICS_PORT": "0"}
    for name in ("DATABASE_URL", "REDIS_URL", "DICOMSTL_SMTP_URL", "DICOMSTL_PUBLIC_URL",
                 "DICOMSTL_STRIPE_SECRET_KEY", "DICOMSTL_STRIPE_WEBHOOK_SECRET",
                 "DICOMSTL_RATE_API", "DICOMSTL_RATE_API_SUBMIT"):
        env.pop(name, None)  # the embedded Redis, mail to files, payments off, default limits
    if database_url:
        env["DATABASE_URL"] = database_url
    with log.open("ab") as fh:
        up = subprocess.Popen([sys.executable, "-m", "dicomstl_cli", "up"], env=env,
                              stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and up.poll() is None:
        try:
            if requests.get(url + "/healthz", timeout=2).ok:
                return up, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_service(up)
    raise RuntimeError("the service did not start:\n" + log.read_text()[-3000:])


def stop_service(up: subprocess.Popen) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def worker_ready(url: str, key: str, upload: Upload, timeout_s: float = 120) -> None:
    """One good job through the whole service before the clock starts (the worker's
    warm-up, first compilations and decoders loaded are not the soak's)."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    files = [("files", (n, d, "application/octet-stream")) for n, d in upload.files]
    r = http.post(url + "/api/v1/jobs", files=files, timeout=60,
                  data={"options": json.dumps(upload.options)})
    r.raise_for_status()
    job_id, deadline = r.json()["id"], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"{url}/api/v1/jobs/{job_id}", timeout=30).json()
        if job["state"] in ("done", "failed"):
            if job["state"] != "done":
                raise RuntimeError(f"the warm-up job failed: {job['message']}")
            return
        time.sleep(0.3)
    raise RuntimeError("the warm-up job did not end")


def final_states(url: str, keys: list[str], tally: Tally) -> Counter:
    """Every job's state now, read again through the API by its owner."""
    states: Counter = Counter()
    sessions = [requests.Session() for _ in keys]
    for http, key in zip(sessions, keys, strict=True):
        http.headers["Authorization"] = f"Bearer {key}"
    for job_id, record in tally.jobs.items():
        r = sessions[record.client].get(f"{url}/api/v1/jobs/{job_id}", timeout=30)
        states[r.json()["state"] if r.ok else f"http {r.status_code}"] += 1
    for http in sessions:
        http.close()
    return states


def redis_job_entries(data_dir: Path) -> int | None:
    """RQ job entries left in the embedded Redis (None when it cannot be read)."""
    from redis import Redis
    from redis.exceptions import RedisError

    from dicomstl.queue import embedded_redis_socket

    try:
        connection = Redis(unix_socket_path=str(embedded_redis_socket(data_dir)))
        return sum(1 for _ in connection.scan_iter(match="rq:job:*", count=1000))
    except RedisError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=2,
                        help="unfinished jobs a client may have")
    parser.add_argument("--job-cap", type=int, default=8, help="unfinished jobs in all")
    parser.add_argument("--poll-s", type=float, default=1.0, help="a job's status poll interval")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS/fd sample interval")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="samples before this (s into the load) are left out of slopes")
    parser.add_argument("--retention-s", type=int, default=60,
                        help="DICOMSTL_RESULT_TTL_S: how long a model is kept")
    parser.add_argument("--sweep-s", type=float, default=5.0, help="DICOMSTL_SWEEP_INTERVAL_S")
    parser.add_argument("--drain-s", type=float, default=180.0,
                        help="the longest to wait for jobs to end after the load")
    parser.add_argument("--max-rss-mb-per-min", type=float, default=8.0)
    parser.add_argument("--max-fds-per-min", type=float, default=2.0)
    parser.add_argument("--max-idle-growth-mb", type=float, default=32.0,
                        help="a process tree's idle RSS after the load less before it")
    parser.add_argument("--max-worker-idle-growth-mb", type=float, default=128.0,
                        help="the same for the worker, whose allocator keeps what a "
                             "conversion freed (3.5 to 58 MiB seen after 60 s)")
    parser.add_argument("--max-idle-fds", type=int, default=4,
                        help="its descriptors after less before (pools reaching their peak)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--database-url", help="PostgreSQL, say (default: SQLite)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args(argv)
    if min(args.clients, args.per_client, args.job_cap) < 1 or args.duration <= 0:
        parser.error("--clients, --per-client and --job-cap must be at least 1")

    from dicomstl.apikeys import create_key

    good, broken = uploads()
    tmp = Path(tempfile.mkdtemp(prefix="dicomstl-soak-"))
    data_dir, log = tmp / "var", tmp / "service.log"
    load_before = os.getloadavg()
    up, url = start_service(data_dir, args.database_url, args.retention_s, args.sweep_s,
                                 log)
    database_url = args.database_url or f"sqlite:///{data_dir / 'dicomstl.db'}"
    tally = Tally()
    try:
        keys = [create_key(database_url, f"soak clinic {n}").key for n in range(args.clients)]
        for upload in good:  # each kind once: its decoder and compilations are warm-up
            worker_ready(url, keys[0], upload)
        prime_pools(url, keys, good)
        start = time.monotonic()
        sampler = Sampler(up.pid, data_dir, args.sample_s, start,
                          int(url.rsplit(":", 1)[1]))
        idle_before = sampler.measure()  # the worker idle, warmed up by its first job
        sampler.start()
        clients = [Client(n, url, keys[n], tally, good, broken, args.seed,
                          start + args.duration, start + args.duration + args.drain_s,
                          args.per_client, args.job_cap, args.poll_s)
                   for n in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(args.duration / 2)
        fds_mid = sampler.fd_kinds()
        time.sleep(args.duration / 2)
        fds_end = sampler.fd_kinds()
        sampler.phase = "drain"
        for c in clients:
            c.join(args.drain_s + 130)
        drained_s = time.monotonic() - start - args.duration
        # the retention window: the last model's deadline and one sweep more
        sampler.phase = "retention"
        ends = [r.finished_at for r in tally.jobs.values() if r.finished_at]
        window_ends = max(ends, default=time.time()) + args.retention_s + args.sweep_s + 2
        emptied_at = None
        while time.time() < window_ends:
            if emptied_at is None and files_under(data_dir / "jobs", data_dir / "incoming") == 0:
                emptied_at = time.time()
            time.sleep(0.5)
        files_left = files_under(data_dir / "jobs", data_dir / "incoming")
        left_paths = [str((Path(d) / f).relative_to(data_dir)) for folder in ("jobs", "incoming")
                      for d, _subdirs, files in os.walk(data_dir / folder) for f in files][:20]
        idle_after = sampler.measure()  # every job ended: the worker idle again
        after = final_states(url, keys, tally)
        redis_left = redis_job_entries(data_dir)
        sampler.halt.set()
        sampler.join()
    finally:
        stop_service(up)
        service_log = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)

    report = summarise(args, tally, sampler, drained_s, files_left, left_paths, after,
                       redis_left, emptied_at, max(ends, default=None), service_log,
                       {"before_load": idle_before, "after_retention": idle_after})
    report["fd_kinds"] = {"half_way": fds_mid, "end_of_load": fds_end}
    report.update({"host": platform.node(), "cpus": os.cpu_count(),
                   "python": platform.python_version(),
                   "load_average_before": [round(x, 2) for x in load_before],
                   "load_average_after": [round(x, 2) for x in os.getloadavg()]})
    emit_json(report, args.json)
    failed = [name for name, ok in report["invariants"].items() if not ok]
    if failed:
        print("invariants failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def summarise(args, tally: Tally, sampler: Sampler, drained_s: float, files_left: int,
              left_paths: list[str], after: Counter, redis_left: int | None,
              emptied_at: float | None, last_end: float | None, service_log: str,
              idle: dict[str, dict]) -> dict:
    """The report: requests, latencies, jobs' fates, trends, what is left, the invariants."""
    by_kind: dict[str, dict] = {}
    for (kind, status), n in sorted(tally.requests.items(), key=str):
        by_kind.setdefault(kind, {})[str(status)] = n
    unexpected = sum(n for (kind, status), n in tally.requests.items()
                     if status not in EXPECTED[kind] and status != 429)
    expected_4xx = Counter()
    for (kind, status), n in tally.requests.items():
        if isinstance(status, int) and 400 <= status < 500 and (status in EXPECTED[kind]
                                                                 or status == 429):
            expected_4xx[str(status)] += n
    records = list(tally.jobs.values())
    ended = [r for r in records if r.state in ("done", "failed")]
    jobs = {
        "submitted": len(records),
        "good": sum(r.good for r in records), "broken": sum(not r.good for r in records),
        "done": sum(r.state == "done" for r in records),
        "failed_with_message": sum(r.state == "failed" and bool(r.message) for r in records),
        "failed_without_message": sum(r.state == "failed" and not r.message for r in records),
        "good_failed": sum(r.good and r.state == "failed" for r in records),
        "broken_done": sum(not r.good and r.state == "done" for r in records),
        "lost": sum(r.state not in ("done", "failed") or (r.state == "failed" and not r.message)
                    for r in records),
        "by_upload": {name: dict(Counter(r.state for r in records if r.upload == name))
                      for name in sorted({r.upload for r in records})},
        "failure_messages": {f"{u}: {m}"[:160]: n for (u, m), n in Counter(
            (r.upload, r.message) for r in records if r.state == "failed").most_common(12)},
        "downloaded": sum(r.downloaded for r in records),
        "downloads_not_whole_stl": tally.downloads_bad,
        "downloaded_mb": round(tally.downloaded_bytes / 2**20, 1),
        "states_after_retention": dict(after),
    }
    job_latency = [1000 * (r.finished_at - r.created_at) for r in ended
                   if r.finished_at and r.created_at]
    trend = trends(sampler.samples, args.warmup_s)
    restarts = {role: max(0, len(tops) - 1) for role, tops in sampler.tops.items()}
    # Each role's idle footprint after the load (every job ended, the retention window
    # passed) against before it (warmed up, pools filled).
    idle_growth = {role: {measure: round(idle["after_retention"][role][measure]
                                         - idle["before_load"][role][measure], 1)
                          for measure in ("rss_mb", "own_fds")} for role in FLAT_ROLES}
    idle_ok = {role: idle_growth[role]["rss_mb"] <= (args.max_worker_idle_growth_mb
                                                     if role == "worker"
                                                     else args.max_idle_growth_mb)
               and idle_growth[role]["own_fds"] <= args.max_idle_fds for role in FLAT_ROLES}
    slope_ok = {role: role in trend
                and trend[role]["rss_mb"]["robust_slope_mb_per_min"] <= args.max_rss_mb_per_min
                and trend[role]["own_fds"]["robust_slope_fds_per_min"] <= args.max_fds_per_min
                for role in FLAT_ROLES}
    # The web app and the scheduler are held to their slopes over a long run; over a short
    # one (under SLOPE_MIN_S of samples) a plateau still rising cannot be told from a leak,
    # and their idle footprints are compared instead. The worker's RSS swings by a
    # conversion's working set between samples inside and outside a job, and under load it
    # is seldom idle: its slope is reported, its idle footprint is what is bounded.
    long_run = args.duration - args.warmup_s >= SLOPE_MIN_S
    flat = {role: (slope_ok[role] if long_run and role != "worker" else True) and idle_ok[role]
            for role in FLAT_ROLES}
    served = sum(tally.requests.values())
    invariants = {
        "no_unexpected_answers": unexpected == 0,
        "no_job_lost": jobs["lost"] == 0,
        "good_series_done": jobs["good_failed"] == 0,
        "broken_inputs_failed_with_message": jobs["broken_done"] == 0,
        "downloads_whole": tally.downloads_bad == 0,
        "memory_and_fds_flat": all(flat.values()) and trend["samples_used"] >= 5,
        "no_process_restarted": not any(restarts.values()),
        "no_files_left": files_left == 0,
        "every_job_deleted": set(after) == {"deleted"} or not after,
        "no_traceback_logged": service_log.count("Traceback") == 0,
    }
    return {
        "benchmark": "soak",
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "settings": {"duration_s": args.duration, "clients": args.clients,
                     "per_client_jobs": args.per_client, "job_cap": args.job_cap,
                     "sample_s": args.sample_s, "warmup_s": args.warmup_s,
                     "retention_s": args.retention_s, "sweep_s": args.sweep_s,
                     "seed": args.seed, "database": "postgresql" if args.database_url
                     else "sqlite", "max_rss_mb_per_min": args.max_rss_mb_per_min,
                     "max_fds_per_min": args.max_fds_per_min,
                     "max_idle_growth_mb": args.max_idle_growth_mb,
                     "max_worker_idle_growth_mb": args.max_worker_idle_growth_mb,
                     "max_idle_fds": args.max_idle_fds},
        "requests": {"served": served, "per_s": round(served / args.duration, 1),
                     "by_kind": by_kind, "expected_4xx": dict(expected_4xx),
                     "unexpected": unexpected, "unexpected_examples": [
                         u for u in tally.unexpected if u][:10]},
        "request_latency_ms": {kind: percentiles(v) for kind, v in
                               sorted(tally.latency_ms.items())},
        "jobs": jobs,
        "job_latency_ms": percentiles(job_latency),
        "jobs_per_min": round(60 * len(ended) / (args.duration + drained_s), 1),
        "drain_s": round(drained_s, 1),
        "trends": trend,
        "idle": {**idle, "growth": idle_growth},
        "restarts": restarts,
        "retention": {"files_left": files_left, "left": left_paths,
                      "seconds_after_last_end_until_empty": round(emptied_at - last_end, 1)
                      if emptied_at and last_end else None,
                      "redis_job_entries_left": redis_left},
        "service_log_tracebacks": service_log.count("Traceback"),
        "samples": sampler.samples,
        "invariants": invariants,
    }


if __name__ == "__main__":
    sys.exit(main())
