"""``dicomstl health web|worker|scheduler``: whether the process of that kind on this host (or
in this container) is healthy, for Docker ``HEALTHCHECK`` and Kubernetes exec probes.

It prints one line and exits 0 when healthy, 1 when not:

- **web**: its readiness route (``/readyz``: the database and Redis answer) answers 200, and
  its metrics port answers (unless ``DICOMSTL_WEB_METRICS_PORT=0``);
- **worker**: its metrics port answers and ``dicomstl_worker_heartbeat_timestamp_seconds`` is
  recent (the worker's loop and, while it converts, its job heartbeat set it);
- **scheduler**: its metrics port answers and ``dicomstl_scheduler_last_pass_timestamp_seconds``
  is recent (every replica sets it after each pass, leading or standing by).

The ports come from the same settings the process reads; nothing on disk is touched.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from dicomstl.settings import Settings

PROCESSES = ("web", "worker", "scheduler")
#: The web app's readiness route (web/health.py).
READINESS_PATH = "/readyz"
#: The longest one HTTP request of a check may take (seconds).
REQUEST_TIMEOUT_S = 3.0
HEARTBEAT_GAUGE = "dicomstl_worker_heartbeat_timestamp_seconds"
LAST_PASS_GAUGE = "dicomstl_scheduler_last_pass_timestamp_seconds"
#: Addresses a server listens on for every interface: a check reaches it on loopback.
_ANY = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: healthy or not, and why, in one line."""

    healthy: bool
    message: str


def worker_max_age_s(settings: Settings) -> float:
    """How old the worker's heartbeat may be: it beats every ``heartbeat_s`` while it
    converts and at least every 45 s while it waits for jobs or for Redis."""
    return max(120.0, 3 * settings.heartbeat_s)


def scheduler_max_age_s(settings: Settings) -> float:
    """How old the scheduler's last pass may be: passes come at least every
    ``sweep_interval_s``, and one may take a while."""
    return max(60.0, 4 * settings.sweep_interval_s)


def local_url(host: str, port: int, path: str) -> str:
    """The URL that reaches a server bound to ``host:port`` from this host."""
    host = "127.0.0.1" if host in _ANY else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def fetch(url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, str]:
    """(HTTP status, body) of a GET; OSError when nothing answers in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def gauge_value(exposition: str, name: str) -> float | None:
    """The largest sample of gauge ``name`` in a Prometheus text exposition, else None."""
    values = [sample.value for family in text_string_to_metric_families(exposition)
              if family.name == name for sample in family.samples if sample.name == name]
    return max(values) if values else None


def _scrape(settings: Settings, process: str) -> tuple[str | None, Verdict | None]:
    """The process's metrics text, or a verdict saying why there is none."""
    port = getattr(settings, f"{process}_metrics_port")
    if not port:
        setting = f"DICOMSTL_{process.upper()}_METRICS_PORT"
        return None, Verdict(False, f"{setting}=0: there are no metrics to check")
    url = local_url(settings.metrics_host, port, "/metrics")
    try:
        status, text = fetch(url)
    except OSError as exc:
        return None, Verdict(False, f"the metrics port {port} does not answer ({_reason(exc)})")
    if status != 200:
        return None, Verdict(False, f"the metrics port {port} answered HTTP {status}")
    return text, None


def check_recent(settings: Settings, process: str, gauge: str, what: str,
                 max_age_s: float, now: Callable[[], float] = time.time) -> Verdict:
    """Healthy when the process's metrics answer and ``gauge`` (a Unix time) is at most
    ``max_age_s`` old; ``what`` names the event in the message."""
    text, failure = _scrape(settings, process)
    if failure:
        return failure
    try:
        stamp = gauge_value(text, gauge)
    except ValueError:
        return Verdict(False, "its metrics could not be parsed")
    if stamp is None:
        return Verdict(False, f"its metrics have no {gauge} (a dicomstl older than this "
                              "check?)")
    if stamp <= 0:
        return Verdict(False, f"no {what} yet (still starting?)")
    age = now() - stamp
    if age > max_age_s:
        return Verdict(False, f"its last {what} was {age:.0f} s ago (more than {max_age_s:.0f} s)")
    return Verdict(True, f"last {what} {max(age, 0):.0f} s ago")


def check_web(settings: Settings) -> Verdict:
    """Healthy when ``/readyz`` answers 200 and the metrics port (if any) answers."""
    url = local_url(settings.host, settings.port, READINESS_PATH)
    try:
        status, body = fetch(url)
    except OSError as exc:
        return Verdict(False, f"port {settings.port} does not answer ({_reason(exc)})")
    if status != 200:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        return Verdict(False, error or f"{READINESS_PATH} answered HTTP {status}")
    if settings.web_metrics_port:
        _text, failure = _scrape(settings, "web")
        if failure:
            return failure
    return Verdict(True, "ready: the database and Redis answer")


def check(settings: Settings, process: str, max_age_s: float | None = None) -> Verdict:
    """The verdict for ``process`` (one of ``PROCESSES``)."""
    if process == "web":
        return check_web(settings)
    if process == "worker":
        return check_recent(settings, "worker", HEARTBEAT_GAUGE, "heartbeat",
                            max_age_s or worker_max_age_s(settings))
    if process == "scheduler":
        return check_recent(settings, "scheduler", LAST_PASS_GAUGE, "pass",
                            max_age_s or scheduler_max_age_s(settings))
    raise ValueError(f"unknown process {process!r}")


def add_command(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("health", help="check a web, worker or scheduler process on this host "
                                      "(exit 0: healthy); for container health checks",
                       description="Whether the web, worker or scheduler process on this "
                                   "host is healthy (exit 0) or not (exit 1), with one line "
                                   "saying why: for Docker HEALTHCHECK and Kubernetes exec "
                                   "probes. Reads the same settings as the process.")
    h.add_argument("process", choices=PROCESSES)
    h.add_argument("--max-age", type=float, metavar="SECONDS",
                   help="how old the worker's heartbeat or the scheduler's last pass may be "
                        "(default: worker 120 s, scheduler 4 sweep intervals)")


def run(args: argparse.Namespace) -> int:
    from dicomstl.settings import load_settings

    verdict = check(load_settings(prepare=False), args.process, args.max_age)
    state = "healthy" if verdict.healthy else "unhealthy"
    print(f"{args.process}: {state}: {verdict.message}", flush=True)
    return 0 if verdict.healthy else 1
