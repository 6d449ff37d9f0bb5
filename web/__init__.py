"""The thin web front end: authenticate, validate, store the upload, make the job, enqueue.

It never decodes pixels or builds meshes; those are the worker's. ``create_app`` builds the
Flask app for one ``Settings``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, abort, current_app, render_template, request, send_from_directory
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from dicomstl import __version__
from dicomstl import queue as q
from dicomstl.db import migrate
from dicomstl.jobs import QueueUnavailable
from dicomstl.settings import Settings, configure, load_settings
from web.uploads import UploadRequest, discard_unclaimed

log = logging.getLogger(__name__)
THREE_DIR = Path(__file__).parent / "node_modules" / "three"
#: Endpoints that take an upload: refused (503) before the body is read when Redis is down.
UPLOAD_ENDPOINTS = {"pages.upload", "api.submit"}
QUEUE_DOWN = ("the conversion queue cannot be reached just now, so the upload was not "
              "accepted and nothing was stored; please try again in a minute")
#: Headers of an HTTP error that its answer keeps.
KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")


def create_app(settings: Settings | None = None, run_migrations: bool = True) -> Flask:
    """The web app; migrates the database first unless told not to."""
    settings = settings or load_settings()
    configure(settings)
    if run_migrations:
        migrate(settings.database_url)
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config.update(
        SETTINGS=settings, SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_PARTS=settings.max_upload_files + 50,
        SESSION_COOKIE_SAMESITE="Lax", WTF_CSRF_TIME_LIMIT=None,
        PREVIEW_AVAILABLE=(THREE_DIR / "build" / "three.module.js").is_file(),
    )
    if not app.config["PREVIEW_AVAILABLE"]:
        log.warning("three.js is not installed (npm ci --prefix web); the 3D preview is off")

    from web.api import api
    from web.pages import duration_words, pages

    if settings.proxy_hops:  # the client's address as the proxies in front of us saw it
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops,
                                x_proto=settings.proxy_hops)
    from web.metrics import instrument

    instrument(app)

    @app.before_request  # before the CSRF check, which reads the whole upload
    def refuse_uploads_without_queue():
        if request.endpoint in UPLOAD_ENDPOINTS and not q.reachable(settings.redis_url):
            raise ServiceUnavailable(QUEUE_DOWN, retry_after=30)

    csrf = CSRFProtect(app)
    csrf.exempt(api)
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.teardown_request(discard_unclaimed)

    @app.context_processor
    def globals_() -> dict:
        return {"version": __version__, "max_upload_bytes": settings.max_upload_bytes,
                "result_kept": duration_words(settings.result_ttl_s)}

    @app.get("/vendor/three/<path:filename>")
    def three(filename: str):
        if not filename.startswith(("build/", "examples/jsm/")) or not filename.endswith(".js"):
            abort(404)
        return send_from_directory(THREE_DIR, filename, max_age=86400)

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "version": __version__}

    def wants_json() -> bool:
        return request.path.startswith("/api/") or \
            request.accept_mimetypes.best == "application/json"

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k in KEPT_HEADERS}
        if wants_json():
            return {"error": _error_text(exc)}, exc.code, headers
        return (render_template("error.html", code=exc.code, message=_error_text(exc)),
                exc.code, headers)

    @app.errorhandler(QueueUnavailable)
    def queue_down(_exc: QueueUnavailable):  # Redis went away while the upload arrived
        return http_error(ServiceUnavailable(QUEUE_DOWN, retry_after=30))

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url_rule)
        text = "internal error; it has been logged. Please try again later."
        if wants_json():
            return {"error": text}, 500
        return render_template("error.html", code=500, message=text), 500

    return app


def _error_text(exc: HTTPException) -> str:
    if exc.code != 413:
        return exc.description or exc.name
    size = current_app.config["MAX_CONTENT_LENGTH"]
    limit = f"{size / 1024**3:.3g} GiB" if size >= 1024**3 else f"{size / 1024**2:.3g} MiB"
    return f"the upload is larger than the limit of {limit}; split it or crop it first"
