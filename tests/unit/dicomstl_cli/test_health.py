"""``dicomstl health``: the command a container health check runs, against real
prometheus_client metrics servers and a small HTTP server standing in for the web app."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server

from dicomstl_cli import health
from dicomstl_cli.main import main
from tests.service.helpers import free_port


@pytest.fixture
def env(monkeypatch, tmp_path) -> dict[str, str]:
    """A clean environment for the command: every port off until a test sets one."""
    values = {"DICOMSTL_DATA_DIR": str(tmp_path / "var"), "DICOMSTL_WEB_METRICS_PORT": "0",
              "DICOMSTL_WORKER_METRICS_PORT": "0", "DICOMSTL_SCHEDULER_METRICS_PORT": "0",
              "DICOMSTL_PORT": str(free_port())}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def metrics_server(monkeypatch) -> Iterator:
    """Serve a registry on a free port as ``process``'s metrics: ``serve(process, registry)``."""
    servers = []

    def serve(process: str, registry=REGISTRY) -> int:
        server, _thread = start_http_server(0, "127.0.0.1", registry)
        servers.append(server)
        port = server.server_port
        monkeypatch.setenv(f"DICOMSTL_{process.upper()}_METRICS_PORT", str(port))
        return port

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _heartbeat(value: float | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if value is not None:
        Gauge(health.HEARTBEAT_GAUGE, "the worker's heartbeat", registry=registry).set(value)
    Gauge("dicomstl_worker_backend_info", "engine", ["backend"], registry=registry)
    return registry


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["health", *args])
    return code, capsys.readouterr().out.strip()


def test_a_worker_with_a_fresh_heartbeat_is_healthy(env, metrics_server, capsys):
    metrics_server("worker", _heartbeat(time.time() - 5))
    code, out = _run(capsys, "worker")
    assert (code, out) == (0, "worker: healthy: last heartbeat 5 s ago")


def test_a_worker_whose_heartbeat_stopped_is_unhealthy(env, metrics_server, capsys):
    metrics_server("worker", _heartbeat(time.time() - 600))
    code, out = _run(capsys, "worker")
    assert code == 1
    assert out == "worker: unhealthy: its last heartbeat was 600 s ago (more than 120 s)"
    assert _run(capsys, "worker", "--max-age", "900")[0] == 0


def test_a_worker_still_starting_or_too_old_says_so(env, metrics_server, capsys):
    metrics_server("worker", _heartbeat(0))  # the gauge exists, never set: warming up
    assert _run(capsys, "worker") == (1, "worker: unhealthy: no heartbeat yet (still starting?)")
    metrics_server("worker", _heartbeat(None))
    code, out = _run(capsys, "worker")
    assert code == 1 and f"its metrics have no {health.HEARTBEAT_GAUGE}" in out


def test_a_metrics_port_that_does_not_answer_or_is_off(env, monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("DICOMSTL_WORKER_METRICS_PORT", str(port))
    code, out = _run(capsys, "worker")
    assert code == 1 and out.startswith(f"worker: unhealthy: the metrics port {port} does "
                                        "not answer (")
    monkeypatch.setenv("DICOMSTL_WORKER_METRICS_PORT", "0")
    assert _run(capsys, "worker") == (
        1, "worker: unhealthy: DICOMSTL_WORKER_METRICS_PORT=0: there are no metrics to check")


def test_the_scheduler_is_checked_by_its_real_last_pass_gauge(env, metrics_server, capsys,
                                                              monkeypatch):
    from scheduler import metrics

    metrics_server("scheduler")  # the process's own registry, with the scheduler's gauges
    metrics.LAST_PASS.set(time.time() - 10)
    assert _run(capsys, "scheduler") == (0, "scheduler: healthy: last pass 10 s ago")
    monkeypatch.setenv("DICOMSTL_SWEEP_INTERVAL_S", "1")  # a pass is due every second
    metrics.LAST_PASS.set(time.time() - 61)
    code, out = _run(capsys, "scheduler")
    assert code == 1 and out.endswith("its last pass was 61 s ago (more than 60 s)")


class _StandIn(http.server.BaseHTTPRequestHandler):
    """The web app's /readyz, answering what the test sets in ``answer``."""

    answer: tuple[int, dict] = (200, {"database": "ok", "redis": "ok"})

    def do_GET(self) -> None:
        status, body = self.answer if self.path == "/readyz" else (404, {"error": "no"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web(env, monkeypatch) -> Iterator[type[_StandIn]]:
    handler = type("Handler", (_StandIn,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DICOMSTL_HOST", "0.0.0.0")  # bound to all: checked on loopback
    monkeypatch.setenv("DICOMSTL_PORT", str(server.server_port))
    yield handler
    server.shutdown()
    server.server_close()


def test_web_is_healthy_when_ready_and_its_metrics_answer(web, metrics_server, capsys,
                                                          monkeypatch):
    assert _run(capsys, "web") == (0, "web: healthy: ready: the database and Redis answer")
    port = free_port()
    monkeypatch.setenv("DICOMSTL_WEB_METRICS_PORT", str(port))
    code, out = _run(capsys, "web")
    assert code == 1 and f"the metrics port {port} does not answer" in out
    metrics_server("web", CollectorRegistry())
    assert _run(capsys, "web")[0] == 0


def test_web_says_what_is_not_ready(web, capsys):
    web.answer = (503, {"database": "ok", "redis": "unavailable",
                        "error": "not ready: Redis cannot be reached"})
    assert _run(capsys, "web") == (1, "web: unhealthy: not ready: Redis cannot be reached")
    web.answer = (500, {})
    assert _run(capsys, "web") == (1, "web: unhealthy: /readyz answered HTTP 500")


def test_web_that_does_not_listen(env, capsys):
    code, out = _run(capsys, "web")
    assert code == 1 and out.startswith(f"web: unhealthy: port {env['DICOMSTL_PORT']} does "
                                        "not answer (")


def test_the_check_writes_nothing(env, capsys, tmp_path):
    _run(capsys, "scheduler")
    assert not (tmp_path / "var").exists()


def test_local_urls():
    assert health.local_url("0.0.0.0", 8000, "/readyz") == "http://127.0.0.1:8000/readyz"
    assert health.local_url("::", 9182, "/metrics") == "http://127.0.0.1:9182/metrics"
    assert health.local_url("10.0.0.7", 1, "/") == "http://10.0.0.7:1/"
    assert health.local_url("::1", 1, "/") == "http://[::1]:1/"


def test_the_worker_exports_the_gauge_this_check_reads():
    from gpu_worker import metrics

    metrics.beat()
    assert abs(REGISTRY.get_sample_value(health.HEARTBEAT_GAUGE) - time.time()) < 5
