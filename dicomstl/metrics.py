"""Prometheus exposition for every process: each serves its metrics on its own port.

Label values name routes, stages, states, queues and kinds: never a job id, a user, an IP or
anything from a DICOM header. The web app runs as several gunicorn processes; their metrics
are written to files in a folder of this machine (prometheus_client's multiprocess mode) and
added up when scraped, so one scrape of the master sees all of them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from dicomstl.errors import ConfigError

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_metrics(host: str, port: int, setting: str, registry=None) -> int | None:
    """Serve ``/metrics`` (any path) on ``host:port`` from a background thread; the port, or
    None when ``port`` is 0 (metrics off). ``setting`` names the variable for the error."""
    if port == 0:
        log.info("metrics are off (%s=0)", setting)
        return None
    from prometheus_client import REGISTRY, start_http_server

    try:
        server, _thread = start_http_server(port, host, registry or REGISTRY)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port} ({exc.strerror}); set "
                          f"{setting} to a free port, or to 0 for no metrics") from None
    log.info("metrics at http://%s:%d/metrics", host, server.server_port)
    return server.server_port


def use_multiprocess_dir() -> Path:
    """Turn on multiprocess mode for this process and its children (gunicorn's workers), in
    ``$PROMETHEUS_MULTIPROC_DIR`` (emptied first: files of an earlier run would add old
    counts) or a new temporary folder, removed when this process exits. Call before any
    metric is made."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        path = Path(folder)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="dicomstl-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
        owner = os.getpid()  # gunicorn's workers are forks: only this process removes it
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, True))
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case prometheus_client was imported
    return path


def multiprocess_registry():
    """A registry that adds up the metrics of every process writing to the multiprocess
    folder (live and dead: counters and histograms keep what exited workers counted)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def process_exited(pid: int) -> None:
    """A gunicorn worker ended: drop its live gauges (its counters keep counting)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
