"""How the web app answers errors: JSON for the API and for clients that ask for JSON, the
HTML error page otherwise; never a stack trace. The upload routes refuse with 503 while the
queue (Redis) cannot be reached, and any request whose Content-Length is over its limit gets
413 before anything else is checked (paying more would not help) or read. A database that
cannot be reached is a 503 and a full data disk a 507, both with Retry-After: the client can
act on them (wait and retry), unlike a 500."""

from __future__ import annotations

import errno
import logging

from flask import Flask, current_app, render_template, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable

from dicomstl import queue as q
from dicomstl.queue import QueueUnavailable

log = logging.getLogger(__name__)

#: Endpoints that take an upload: refused (503) before the body is read when Redis is down.
UPLOAD_ENDPOINTS = {"pages.upload", "api.submit"}
QUEUE_DOWN = ("the conversion queue cannot be reached just now, so the upload was not "
              "accepted and nothing was stored; please try again in a minute")
#: Headers of an HTTP error that its answer keeps.
KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")
INTERNAL = "internal error; it has been logged. Please try again later."
DATABASE_DOWN = ("the service's database cannot be reached just now, so the request was not "
                 "completed; please try again in a minute")
DISK_FULL = ("the server has no room to store this just now, so it was not stored; please try "
             "again later")


def wants_json() -> bool:
    """Whether this request's answer is JSON: the API, or a client that prefers JSON."""
    return request.path.startswith("/api/") or \
        request.accept_mimetypes.best == "application/json"


def error_text(exc: HTTPException) -> str:
    """What the user reads for an HTTP error."""
    if exc.code != 413:
        return exc.description or exc.name
    size = request.max_content_length or current_app.config["MAX_CONTENT_LENGTH"]
    limit = f"{size / 1024**3:.3g} GiB" if size >= 1024**3 else f"{size / 1024**2:.3g} MiB"
    if request.mimetype != "multipart/form-data":
        return f"the request body is larger than the limit of {limit} for a request that is " \
            "not an upload"
    return f"the upload is larger than the limit of {limit}; split it or crop it first"


def answer(code: int, message: str, headers: dict | None = None, *,
           link: tuple[str, str] | None = None, extra: dict | None = None):
    """An error answer in the request's format; ``link`` (URL, text) shows on the HTML page,
    ``extra`` adds fields to the JSON."""
    if wants_json():
        return {"error": message, **(extra or {})}, code, headers or {}
    return render_template("error.html", code=code, message=message, link=link), code, \
        headers or {}


def http_error(exc: HTTPException):
    return answer(exc.code, error_text(exc),
                  {k: v for k, v in exc.get_headers() if k in KEPT_HEADERS})


def queue_down(_exc: QueueUnavailable | None = None):
    """Redis went away (before the upload, or while it arrived): 503, nothing kept."""
    return http_error(ServiceUnavailable(QUEUE_DOWN, retry_after=30))


def database_down(exc: OperationalError | InterfaceError):
    """The database went away or refused a connection: 503, try again (no traceback: the
    cause is outside the app, and its message may quote a statement's values)."""
    log.error("database unavailable on %s %s: %s", request.method, request.url_rule,
              type(exc.orig or exc).__name__)
    return http_error(ServiceUnavailable(DATABASE_DOWN, retry_after=30))


def os_error(exc: OSError):
    """A full data disk (or quota) is a 507 with Retry-After; any other OSError a 500."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return internal_error(exc)
    log.error("no room on the data disk on %s %s", request.method, request.url_rule)
    return answer(507, DISK_FULL, {"Retry-After": "60"})


def internal_error(exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url_rule)
    return answer(500, INTERNAL)


def register(app: Flask) -> None:
    """Install the error handlers, and the queue check before any upload is read (call it
    before CSRF protection is set up: its check reads the whole upload)."""
    settings = app.config["SETTINGS"]

    @app.before_request
    def refuse_oversize_bodies():
        limit = request.max_content_length
        if limit is not None and (request.content_length or 0) > limit:
            return http_error(RequestEntityTooLarge())
        return None

    @app.before_request
    def refuse_uploads_without_queue():
        if request.endpoint in UPLOAD_ENDPOINTS and not q.reachable(settings.redis_url):
            return queue_down()
        return None

    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(QueueUnavailable, queue_down)
    app.register_error_handler(OperationalError, database_down)
    app.register_error_handler(InterfaceError, database_down)
    app.register_error_handler(OSError, os_error)
    app.register_error_handler(Exception, internal_error)
