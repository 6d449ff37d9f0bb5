"""The IP log from the web app: one row per upload, API call, login attempt and account action
(a refused one too), holding the client's address, the time, the route's pattern
(``/api/v1/jobs/<job_id>``, never a URL with ids) and the account where known (``g.account_id``:
the logged-in user, or the user an API key's organisation was made by). Views say which kind
they are with ``@logged_as``; the scheduler deletes rows after 30 days
(``dicomstl.retention_policy``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, g, request
from sqlalchemy.exc import SQLAlchemyError

from dicomstl import iplog

log = logging.getLogger(__name__)


def logged_as(kind: str, methods: tuple[str, ...] = ()) -> Callable:
    """Mark a view as one whose requests (only ``methods``, when given) are logged by IP, as
    ``kind`` (``iplog.KINDS``)."""
    if kind not in iplog.KINDS:
        raise ValueError(f"unknown IP log kind {kind!r}")

    def mark(view: Callable) -> Callable:
        view.ip_log_kind = kind
        view.ip_log_methods = methods
        return view
    return mark


def register(app: Flask) -> None:
    """Write the row after each request to a marked view, whatever its answer."""

    @app.after_request
    def _log(response):
        view = app.view_functions.get(request.endpoint or "")
        kind = getattr(view, "ip_log_kind", None)
        methods = getattr(view, "ip_log_methods", ())
        if kind and (not methods or request.method in methods):
            route = request.url_rule.rule
            try:
                iplog.record(app.config["SETTINGS"].database_url, request.remote_addr or "",
                             kind, route, account_id=g.get("account_id"))
            except SQLAlchemyError:
                log.warning("could not write the IP log row for %s", route)
        return response
