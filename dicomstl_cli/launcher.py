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
import threading
import time

from redis.exceptions import RedisError

from dicomstl.db import engine_for
from dicomstl.settings import Settings

log = logging.getLogger(__name__)

#: RQ worker loops in a row that may stop on an error while Redis answers before the worker
#: process gives up (and its supervisor restarts it).
MAX_UNEXPLAINED_STOPS = 5
#: RQ's worker registration lifetime, s: an idle worker waits at most this minus 15 s for a
#: job before it beats again (RQ's default, 420 s, is too slow for a health check).
WORKER_TTL_S = 60


def serve(settings: Settings) -> None:
    """The web app under gunicorn (threaded workers, so long uploads block no one; slow
    clients paced by ``web.server``); the master serves the metrics of all its workers."""
    from gunicorn.app.base import BaseApplication

    from dicomstl.metrics import (
        multiprocess_registry,
        process_exited,
        serve_metrics,
        use_multiprocess_dir,
    )

    use_multiprocess_dir()  # before the app's metrics are made
    from web import create_app
    from web.server import Limits, PacedThreadWorker

    PacedThreadWorker.limits = Limits.from_settings(settings)  # the workers fork from here

    class App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{settings.host}:{settings.port}", "workers": settings.web_workers,
                "threads": settings.web_threads, "worker_class": "web.server.PacedThreadWorker",
                # Idle kept-alive and silent new connections wait in the poller (no thread)
                # but hold a connection slot: 5 s outlasts a job page's status polls (0.5 s)
                # and nginx's upstream keepalive_timeout (4 s, deploy/nginx), and frees a
                # slot soon after a client goes quiet.
                "keepalive": 5,
                "timeout": 120, "graceful_timeout": 10, "accesslog": None, "errorlog": "-",
                "proc_name": "dicomstl-web", "limit_request_line": 8190,
                "control_socket_disable": True,
                "child_exit": lambda _server, worker: process_exited(worker.pid),
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    # The command migrated: gunicorn forks its workers from this process, and none may
    # inherit the pooled connection that used.
    engine_for(settings.database_url).dispose()
    serve_metrics(settings.metrics_host, settings.web_metrics_port, "DICOMSTL_WEB_METRICS_PORT",
                  multiprocess_registry())
    App().run()


def run_worker(settings: Settings, burst: bool = False) -> None:
    """An RQ worker on every queue, interactive first, that keeps the engine warm.

    It runs jobs in its own process (``SimpleWorker``, no fork per job), so compiled kernels
    and a CUDA context live as long as the worker. When Redis goes away the worker waits
    for it (pauses doubling up to 30 s) and carries on; a conversion running meanwhile
    finishes, since its state is in the database.
    """
    from rq import SimpleWorker

    from dicomstl import queue as q
    from dicomstl.metrics import serve_metrics
    from gpu_worker import metrics as worker_metrics
    from gpu_worker.engines import resolve_backend
    from gpu_worker.kernel_cache import kernel_words
    from gpu_worker.tasks import use_settings, warm_up

    class Worker(SimpleWorker):
        """RQ's worker, remembering whether it was asked to stop (SIGTERM or SIGINT)."""

        stop_requested = False

        def request_stop(self, signum, frame) -> None:
            self.stop_requested = True
            super().request_stop(signum, frame)

        def heartbeat(self, *args, **kwargs) -> None:
            super().heartbeat(*args, **kwargs)
            worker_metrics.beat()  # for `dicomstl health worker`

    serve_metrics(settings.metrics_host, settings.worker_metrics_port,
                  "DICOMSTL_WORKER_METRICS_PORT")
    engine = resolve_backend(settings.backend)  # once: the engine stays warm for every job
    warm = warm_up(engine)
    use_settings(settings, engine)
    log.info("worker ready: %s engine, warmed up in %.2f s (%s)", warm["backend"],
             warm["seconds"], kernel_words(warm["kernels"]))
    connection = q.connect(settings.redis_url)
    queues = [q.queue(settings.redis_url, name) for name in q.QUEUES]
    stop = threading.Event()
    pause, generation, unexplained = 1.0, 0, 0
    while True:
        generation += 1  # a new name: the last one may still be registered in Redis
        started, worker = time.monotonic(), None
        try:
            worker = Worker(queues, connection=connection, worker_ttl=WORKER_TTL_S, name=(
                f"dicomstl-{socket.gethostname()}-{os.getpid()}-{generation}"))
            worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
            lost = not q.reachable(settings.redis_url)
        except RedisError:
            lost = True
        if (worker is not None and worker.stop_requested) or (burst and not lost):
            return  # SIGTERM/SIGINT (RQ's own handlers), or the queues are empty
        if time.monotonic() - started > 60:  # it worked for a while: start afresh
            pause, unexplained = 1.0, 0
        # RQ's loop also quits on an error it logs itself: mostly a Redis outage that is
        # over by now. Only one that keeps coming back with Redis up is a fault to report.
        unexplained = 0 if lost else unexplained + 1
        if unexplained > MAX_UNEXPLAINED_STOPS:
            raise RuntimeError("the RQ worker loop keeps stopping on an error (logged above)")
        for sig in (signal.SIGTERM, signal.SIGINT):  # RQ's handlers need a live worker
            signal.signal(sig, lambda *_: stop.set())
        log.warning("%s; the worker connects again in %.0f s", "Redis is unreachable" if lost
                    else "the RQ worker loop stopped on an error (logged above)", pause)
        worker_metrics.beat()  # waiting for Redis is what it should do: still healthy
        if stop.wait(pause):
            return
        pause = min(30.0, 2 * pause)


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
    """Everything on one machine until Ctrl-C or SIGTERM, each process restarted when it
    dies (``supervisor``); returns the exit status."""
    from dicomstl.queue import embedded_redis_socket, socket_url, start_embedded_redis
    from dicomstl_cli.supervisor import Supervisor

    env = dict(os.environ, DICOMSTL_DATA_DIR=str(settings.data_dir))
    env.setdefault("DATABASE_URL", settings.database_url)
    supervisor = Supervisor(settings.max_restarts, settings.restart_window_s)
    if settings.redis_url is None:
        socket_path = embedded_redis_socket(settings.data_dir)  # the same after a restart
        env["REDIS_URL"] = socket_url(socket_path)
        supervisor.add("redis-server", lambda: start_embedded_redis(
            settings.data_dir, socket_path)[0], stop_last=True)
    port = _port_or_free(settings.host, settings.port, "the web app")  # 0: any free port
    env["DICOMSTL_PORT"] = str(port)
    metrics = {}
    for name in ("web", "worker", "scheduler"):
        wanted = getattr(settings, f"{name}_metrics_port")  # 0: none
        metrics[name] = _port_or_free(settings.metrics_host, wanted, f"{name} metrics") \
            if wanted else 0
        env[f"DICOMSTL_{name.upper()}_METRICS_PORT"] = str(metrics[name])
    # the one scheduler, restarted in place by the supervisor: its lease is its own again
    env.setdefault("DICOMSTL_SCHEDULER_REPLICA", f"up-{os.getpid()}")
    for name, command in (("web", "serve"), ("worker", "worker"), ("scheduler", "scheduler")):
        # Own sessions: Ctrl-C reaches only this process, which stops them in order (Redis last).
        supervisor.add(name, lambda command=command: subprocess.Popen(
            [sys.executable, "-m", "dicomstl_cli", command], env=env, start_new_session=True))
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
    if not settings.smtp_url:
        print(f"E-mail (account confirmations, password resets) is written to "
              f"{settings.mail_dir}/ (DICOMSTL_SMTP_URL sends it)", flush=True)
    if not settings.billing_enabled:
        print("Payments are off (no Stripe keys); grant credits with `dicomstl credits grant "
              "EMAIL N`", flush=True)
    status = 0
    while not stopping:
        if not supervisor.check():
            print(f"{supervisor.failure}; stopping", file=sys.stderr, flush=True)
            status = 1
            break
        time.sleep(0.2)
    supervisor.stop()
    print("dicomstl stopped", flush=True)
    return status
