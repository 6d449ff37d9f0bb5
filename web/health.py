"""Liveness and readiness of the web app, for load balancers, orchestrators and container
health checks.

- ``/healthz`` (live): the process answers. It checks nothing else, so an outage of the
  database or Redis never gets a healthy web process restarted.
- ``/readyz`` (ready): the database answers ``SELECT 1`` and Redis answers ``PING``, each
  within ``CHECK_TIMEOUT_S``, checked side by side; 200 ``{"database": "ok", "redis": "ok"}``,
  else 503 with ``"unavailable"`` for what failed and an ``error`` in words. The answer never
  holds a URL, a host name or an exception's text; the web app's log says more, once per
  change of state.

Neither route needs a session or a key, and neither is written to the IP log.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from flask import Blueprint, current_app
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dicomstl import __version__
from dicomstl.db import engine_for

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)

#: The longest each check waits for a connection, and then for its answer (seconds).
CHECK_TIMEOUT_S = 2.0
OK, UNAVAILABLE = "ok", "unavailable"
#: Probes must see the answer of now, never one a proxy kept.
NO_STORE = {"Cache-Control": "no-store"}

_last_problems: dict[str, str | None] = {}  # per check: the last failure logged, None once ok


@cache
def _probe_engine(url: str) -> Engine:
    """A small pool of its own for the database check, with short timeouts, so neither a
    busy application pool nor a black-holed host can hold the probe. SQLite (a local file)
    uses the application's engine: ``SELECT 1`` takes no lock to wait for."""
    main = engine_for(url)
    if main.dialect.name != "postgresql":
        return main
    timeout = max(2, round(CHECK_TIMEOUT_S))  # libpq's connect_timeout: whole seconds, >= 2
    return create_engine(
        main.url, pool_size=1, max_overflow=2, pool_timeout=CHECK_TIMEOUT_S,
        pool_pre_ping=True, pool_recycle=300,
        connect_args={"connect_timeout": timeout,
                      "options": f"-c statement_timeout={int(CHECK_TIMEOUT_S * 1000)}"})


@cache
def _probe_redis(url: str) -> Redis:
    """A client of its own for the Redis check: short timeouts and no retries."""
    return Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S,
                          socket_timeout=CHECK_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def check_database(url: str) -> str | None:
    """None when the database answers ``SELECT 1`` in time, else what is wrong, in words."""
    try:
        with _probe_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        _log_failure("database", exc)
        if isinstance(exc, PoolTimeout) or "timeout" in str(exc).lower():
            return f"the database did not answer within {CHECK_TIMEOUT_S:g} s"
        return "the database cannot be reached"
    return None


def check_redis(url: str | None) -> str | None:
    """None when Redis answers ``PING`` in time, else what is wrong, in words."""
    if not url:
        return "REDIS_URL is not set"
    try:
        _probe_redis(url).ping()
    except RedisError as exc:
        _log_failure("redis", exc)
        if isinstance(exc, RedisTimeout):
            return f"Redis did not answer within {CHECK_TIMEOUT_S:g} s"
        if isinstance(exc, AuthenticationError):
            return "Redis refused the credentials of REDIS_URL"
        return "Redis cannot be reached"
    return None


def _log_failure(name: str, exc: Exception) -> None:
    problem = f"{type(exc).__name__}: {exc}"
    if _last_problems.get(name) != problem:
        log.warning("readiness: %s check failed (%s)", name, problem)
    _last_problems[name] = problem


def _log_recovery(name: str) -> None:
    if _last_problems.get(name):
        log.info("readiness: %s answers again", name)
    _last_problems[name] = None


@health.get("/healthz")
def healthz():
    return {"ok": True, "version": __version__}, 200, NO_STORE


@health.get("/readyz")
def readyz():
    settings = current_app.config["SETTINGS"]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz") as pool:
        database = pool.submit(check_database, settings.database_url)
        redis = pool.submit(check_redis, settings.redis_url)
        problems = {"database": database.result(), "redis": redis.result()}
    for name, problem in problems.items():
        if problem is None:
            _log_recovery(name)
    body = {name: OK if problem is None else UNAVAILABLE for name, problem in problems.items()}
    failed = [problem for problem in problems.values() if problem]
    if not failed:
        return body, 200, NO_STORE
    body["error"] = "not ready: " + "; ".join(failed)
    return body, 503, {**NO_STORE, "Retry-After": "10"}
