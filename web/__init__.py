"""The thin web front end: authenticate, validate, store the upload, make the job, enqueue.

It never decodes pixels or builds meshes; those are the worker's. ``create_app`` builds the
Flask app for one ``Settings``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, abort, send_from_directory
from flask_wtf.csrf import CSRFProtect

from dicomstl import __version__
from dicomstl.retention_policy import result_kept
from dicomstl.settings import Settings
from web import charging, errors, ip_log, login, metrics, security
from web.uploads import UploadRequest, discard_unclaimed

log = logging.getLogger(__name__)
THREE_DIR = Path(__file__).parent / "node_modules" / "three"


def create_app(settings: Settings) -> Flask:
    """The web app for ``settings`` (its database already at the newest schema)."""
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

    from web.accounts import accounts
    from web.api import api
    from web.billing import billing
    from web.health import health
    from web.pages import pages
    from web.privacy import privacy

    if settings.proxy_hops:  # the client's address as the proxies in front of us saw it
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops,
                                x_proto=settings.proxy_hops)
    metrics.instrument(app)
    ip_log.register(app)
    login.install(app)
    # Before the CSRF check, which reads the whole body: an upload over its rate limit, with
    # no queue to take it, or that cannot be paid for is refused before it is received.
    security.install(app, settings)
    errors.register(app)
    charging.register(app)
    csrf = CSRFProtect(app)
    csrf.exempt(api)
    csrf.exempt("web.billing.webhook")  # Stripe signs it instead
    app.register_blueprint(health)  # /healthz, /readyz: no session, no key, no IP log
    app.register_blueprint(pages)
    app.register_blueprint(accounts)
    app.register_blueprint(billing)
    app.register_blueprint(privacy)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.teardown_request(discard_unclaimed)

    @app.context_processor
    def globals_() -> dict:
        return {"version": __version__, "max_upload_bytes": settings.max_upload_bytes,
                "result_kept": result_kept(settings), "account": login.account(),
                "billing_enabled": settings.billing_enabled}

    @app.get("/vendor/three/<path:filename>")
    def three(filename: str):
        if not filename.startswith(("build/", "examples/jsm/")) or not filename.endswith(".js"):
            abort(404)
        return send_from_directory(THREE_DIR, filename, max_age=86400)

    return app
