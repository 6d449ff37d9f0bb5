"""The IP log from the web app: one row per upload and API call (a refused one too), holding
the client's address, the time and the route's pattern (``/api/v1/jobs/<job_id>``, never a URL
with ids). Views say which kind they are with ``@logged_as``; the scheduler deletes rows after
30 days (``dicomstl.retention_policy``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, request
from sqlalchemy.exc import SQLAlchemyError

from dicomstl import iplog

log = logging.getLogger(__name__)


def logged_as(kind: str) -> Callable:
    """Mark a view as one whose requests are logged by IP, as ``kind`` (``iplog.KINDS``)."""
    if kind not in iplog.KINDS:
        raise ValueError(f"unknown IP log kind {kind!r}")

    def mark(view: Callable) -> Callable:
        view.ip_log_kind = kind
        return view
    return mark


def register(app: Flask) -> None:
    """Write the row after each request to a marked view, whatever its answer."""

    @app.after_request
    def _log(response):
        view = app.view_functions.get(request.endpoint or "")
        kind = getattr(view, "ip_log_kind", None)
        if kind:
            route = request.url_rule.rule
            try:
                iplog.record(app.config["SETTINGS"].database_url, request.remote_addr or "",
                             kind, route)
            except SQLAlchemyError:
                log.warning("could not write the IP log row for %s", route)
        return response
