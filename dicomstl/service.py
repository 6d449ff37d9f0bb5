"""Running the service's processes: the web app under gunicorn, a worker, and ``up``, which
starts Redis (when ``REDIS_URL`` is unset), the web app, one worker and the scheduler on one
machine and stops them all on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from dicomstl.db import engine_for, migrate
from dicomstl.settings import Settings, configure

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """The web app under gunicorn (threaded workers, so long uploads block no one); the
    master serves the metrics of all its workers."""
    from gunicorn.app.base import BaseApplication

    from dicomstl.metrics import (
        multiprocess_registry,
        process_exited,
        serve_metrics,
        use_multiprocess_dir,
    )

    use_multiprocess_dir()  # before the app's metrics are made
    from web import create_app

    class App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{settings.host}:{settings.port}", "workers": settings.web_workers,
                "threads": settings.web_threads, "worker_class": "gthread", "timeout": 120,
                "graceful_timeout": 10, "accesslog": None, "errorlog": "-",
                "proc_name": "dicomstl-web", "limit_request_line": 8190,
                "control_socket_disable": True,
                "child_exit": lambda _server, worker: process_exited(worker.pid),
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings, run_migrations=False)  # the master migrated

    migrate(settings.database_url)
    # gunicorn forks its workers from this process: none may inherit its pooled connections
    engine_for(settings.database_url).dispose()
    serve_metrics(settings.metrics_host, settings.web_metrics_port, "DICOMSTL_WEB_METRICS_PORT",
                  multiprocess_registry())
    App().run()


def run_worker(settings: Settings, burst: bool = False) -> None:
    """An RQ worker on every queue, interactive first, that keeps the engine warm.

    It runs jobs in its own process (``SimpleWorker``, no fork per job), so compiled kernels
    and a CUDA context live as long as the worker.
    """
    from rq import SimpleWorker

    from dicomstl import queue as q
    from dicomstl.metrics import serve_metrics
    from gpu_worker.tasks import warm_up

    configure(settings)
    migrate(settings.database_url)
    serve_metrics(settings.metrics_host, settings.worker_metrics_port,
                  "DICOMSTL_WORKER_METRICS_PORT")
    warm = warm_up(settings.backend)
    log.info("worker ready: %s engine, warmed up in %.2f s", warm["backend"], warm["seconds"])
    connection = q.connect(settings.redis_url)
    worker = SimpleWorker([q.queue(settings.redis_url, name) for name in q.QUEUES],
                          connection=connection,
                          name=f"dicomstl-{socket.gethostname()}-{os.getpid()}")
    worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_or_free(host: str, port: int, what: str) -> int:
    """``port``, or a free one when it is 0 or (with a warning) something listens there."""
    if port == 0:
        return _free_port(host)
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) != 0:
            return port
    free = _free_port(host)
    log.warning("port %d (%s) is taken; using %d", port, what, free)
    return free


def up(settings: Settings) -> int:
    """Everything on one machine until Ctrl-C; returns the exit status."""
    from dicomstl.queue import start_embedded_redis

    env = dict(os.environ, DICOMSTL_DATA_DIR=str(settings.data_dir))
    env.setdefault("DATABASE_URL", settings.database_url)
    redis_proc = None
    if settings.redis_url is None:
        redis_proc, env["REDIS_URL"] = start_embedded_redis(settings.data_dir)
    port = _port_or_free(settings.host, settings.port, "the web app")  # 0: any free port
    env["DICOMSTL_PORT"] = str(port)
    metrics = {}
    for name in ("web", "worker", "scheduler"):
        wanted = getattr(settings, f"{name}_metrics_port")  # 0: none
        metrics[name] = _port_or_free(settings.metrics_host, wanted, f"{name} metrics") \
            if wanted else 0
        env[f"DICOMSTL_{name.upper()}_METRICS_PORT"] = str(metrics[name])
    migrate(settings.database_url)
    children: dict[str, subprocess.Popen] = {}
    for name in ("serve", "worker", "scheduler"):
        # Own sessions: Ctrl-C reaches only this process, which stops them in order (Redis last).
        children[name] = subprocess.Popen([sys.executable, "-m", "dicomstl", name], env=env,
                                          start_new_session=True)
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"dicomstl is running at http://{settings.host}:{port}/  (Ctrl-C stops it)",
          flush=True)
    if any(metrics.values()):
        print("Prometheus metrics: " + ", ".join(
            f"{name} http://{settings.metrics_host}:{p}/metrics"
            for name, p in metrics.items() if p), flush=True)
    status = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"the {name} process ended (exit {proc.returncode}); stopping",
                      file=sys.stderr)
                stopping, status = True, 1
        time.sleep(0.2)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if redis_proc is not None:
        redis_proc.terminate()
        redis_proc.wait(10)
    print("dicomstl stopped", flush=True)
    return status
