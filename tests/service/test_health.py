"""/healthz and /readyz against the real app: a real redis-server (stopped, refusing, or
silent), SQLite and PostgreSQL (when one answers), and the app under gunicorn."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from dicomstl.db import IpLogEntry, session_scope
from dicomstl.queue import start_embedded_redis
from tests.service.helpers import free_port, spawn, stop, wait_for
from web import create_app
from web.health import CHECK_TIMEOUT_S
from web.openapi import spec

#: A failed check must answer well within a probe's usual timeout (5 s).
ANSWER_WITHIN_S = 2 * CHECK_TIMEOUT_S + 1
#: For tests whose database does not matter (or is replaced): SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple]:
    """A real redis-server this test may stop: (process, URL)."""
    folder = tmp_path / "redis"
    folder.mkdir()
    proc, url = start_embedded_redis(folder)
    yield proc, url
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_url(redis_server) -> str:
    """The conftest's ``redis_url``, from a server the test can stop."""
    return redis_server[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung Redis or database."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def _client(settings, **changes):
    app = create_app(dataclasses.replace(settings, **changes) if changes else settings)
    app.config["TESTING"] = True
    return app.test_client()


def _readyz(client) -> tuple[int, dict, float]:
    start = time.monotonic()
    response = client.get("/readyz")
    return response.status_code, response.get_json(), time.monotonic() - start


def _assert_discreet(body: dict, *secrets: str) -> None:
    """No URL, socket path, host or exception text in an answer."""
    text = repr(body)
    for secret in secrets:
        assert secret not in text
    for word in ("://", "127.0.0.1", "Traceback", "Error ", ".sock"):
        assert word not in text, text


@sqlite_only
def test_healthz_says_the_process_answers(app):
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["ok"] is True
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_checks_the_database_and_redis(app):
    status, body, _ = _readyz(app.test_client())
    assert (status, body) == (200, {"database": "ok", "redis": "ok"})


def test_readyz_names_redis_when_it_stopped(app, redis_server, settings):
    client = app.test_client()
    assert _readyz(client)[0] == 200
    proc, url = redis_server
    proc.terminate()
    proc.wait(10)
    status, body, seconds = _readyz(client)
    assert status == 503
    assert body["database"] == "ok" and body["redis"] == "unavailable"
    assert body["error"] == "not ready: Redis cannot be reached"
    assert seconds < ANSWER_WITHIN_S
    _assert_discreet(body, url, str(settings.data_dir))


@sqlite_only
def test_readyz_names_redis_when_nothing_listens(settings):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    status, body, seconds = _readyz(_client(settings, redis_url=url))
    assert status == 503 and body["redis"] == "unavailable" and body["database"] == "ok"
    assert "Redis cannot be reached" in body["error"]
    assert seconds < ANSWER_WITHIN_S
    _assert_discreet(body, "hunter2")


@sqlite_only
def test_readyz_gives_up_on_a_redis_that_never_answers(settings, silent_server):
    url = f"redis://127.0.0.1:{silent_server}/0"
    status, body, seconds = _readyz(_client(settings, redis_url=url))
    assert status == 503 and body["redis"] == "unavailable"
    assert body["error"] == f"not ready: Redis did not answer within {CHECK_TIMEOUT_S:g} s"
    assert CHECK_TIMEOUT_S * 0.9 < seconds < ANSWER_WITHIN_S


@sqlite_only
def test_readyz_names_the_database_when_it_cannot_be_reached(settings):
    url = f"postgresql://dicomstl:hunter2@127.0.0.1:{free_port()}/dicomstl"
    status, body, seconds = _readyz(_client(settings, database_url=url))
    assert status == 503
    assert body["database"] == "unavailable" and body["redis"] == "ok"
    assert body["error"] == "not ready: the database cannot be reached"
    assert seconds < ANSWER_WITHIN_S
    _assert_discreet(body, "hunter2", "dicomstl:")


@sqlite_only
def test_readyz_gives_up_on_a_database_that_never_answers(settings, silent_server):
    url = f"postgresql://dicomstl@127.0.0.1:{silent_server}/dicomstl"
    status, body, seconds = _readyz(_client(settings, database_url=url))
    assert status == 503 and body["database"] == "unavailable"
    assert body["error"] == f"not ready: the database did not answer within {CHECK_TIMEOUT_S:g} s"
    assert seconds < ANSWER_WITHIN_S


@sqlite_only
def test_readyz_names_both_when_both_are_down(settings):
    status, body, _ = _readyz(_client(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=f"postgresql://x@127.0.0.1:{free_port()}/x"))
    assert status == 503
    assert body == {"database": "unavailable", "redis": "unavailable",
                    "error": "not ready: the database cannot be reached; "
                             "Redis cannot be reached"}


def test_probes_are_not_logged_by_ip_nor_limited_nor_given_a_session(app, settings):
    client = app.test_client()
    for _ in range(50):  # an orchestrator probes every few seconds, from several places
        for path in ("/healthz", "/readyz"):
            response = client.get(path)
            assert response.status_code == 200
            assert "Set-Cookie" not in response.headers
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(IpLogEntry)) == 0


@sqlite_only
def test_the_openapi_document_describes_both_at_the_site_root(settings):
    paths = spec(settings)["paths"]
    for path in ("/healthz", "/readyz"):
        assert paths[path]["servers"] == [{"url": "/"}]
        assert paths[path]["get"]["security"] == []
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert f"within {CHECK_TIMEOUT_S:g} s" in paths["/readyz"]["get"]["summary"]


@sqlite_only
def test_the_served_app_turns_unready_and_ready_with_redis(web_url, redis_server):
    assert requests.get(web_url + "/readyz", timeout=10).json() == {"database": "ok",
                                                                    "redis": "ok"}
    proc, url = redis_server
    proc.terminate()
    proc.wait(10)
    answer = requests.get(web_url + "/readyz", timeout=10)
    assert answer.status_code == 503 and answer.json()["redis"] == "unavailable"
    assert answer.headers["Retry-After"] == "10"
    assert requests.get(web_url + "/healthz", timeout=10).status_code == 200  # still live
    sock = Path(url.removeprefix("unix://"))
    again, _ = start_embedded_redis(sock.parent, sock)  # back on the same socket
    try:
        deadline = time.monotonic() + 10
        while requests.get(web_url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after Redis came back"
            time.sleep(0.2)
    finally:
        again.terminate()
        again.wait(10)


def _health(process: str, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "dicomstl_cli", "health", process],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stdout.strip()


@sqlite_only
def test_dicomstl_health_web_follows_readiness(web_url, redis_server, service_env):
    env = {**service_env, "DICOMSTL_PORT": web_url.rsplit(":", 1)[1]}
    assert _health("web", env) == (0, "web: healthy: ready: the database and Redis answer")
    proc, _url = redis_server
    proc.terminate()
    proc.wait(10)
    assert _health("web", env) == (1, "web: unhealthy: not ready: Redis cannot be reached")


@sqlite_only
def test_dicomstl_health_scheduler_on_a_real_scheduler(service_env, settings, tmp_path):
    env = {**service_env, "DICOMSTL_SCHEDULER_METRICS_PORT": str(free_port())}
    proc = spawn(["scheduler"], env, tmp_path / "scheduler.log")
    try:
        wait_for(lambda: _health("scheduler", env)[0] == 0, 60, "a healthy scheduler")
        code, out = _health("scheduler", env)
        assert out.startswith("scheduler: healthy: last pass ")
    finally:
        stop(proc)
    code, out = _health("scheduler", env)
    assert code == 1 and "does not answer" in out


@sqlite_only
def test_dicomstl_health_worker_on_a_real_worker(service_env, settings, tmp_path):
    env = {**service_env, "DICOMSTL_WORKER_METRICS_PORT": str(free_port())}
    proc = spawn(["worker"], env, tmp_path / "worker.log")
    try:
        wait_for(lambda: _health("worker", env)[0] == 0, 60, "a healthy worker")
        assert _health("worker", env)[1].startswith("worker: healthy: last heartbeat ")
    finally:
        stop(proc)
    assert _health("worker", env)[0] == 1
