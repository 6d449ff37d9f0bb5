"""Abuse protection and security headers for every answer.

- Rate limits (Flask-Limiter, counters in Redis; per client address, and per API key for the
  API): login, registration, password reset, the contact form and the form's uploads per
  address; every API call and API submissions per key. They are checked before a request's
  body is read (an upload refused for its rate is never received) and answered 429 with
  ``Retry-After``. The limits are settings (``DICOMSTL_RATE_*``). While Redis is away they
  are counted in memory, per process.
- Headers (Flask-Talisman): a Content-Security-Policy that allows nothing from another
  origin (``default-src 'self'``; scripts also need this request's nonce; no framing), HSTS
  when the request came over HTTPS, ``nosniff``, a same-origin referrer policy.
- ``Cache-Control: no-store`` on every answer but the public files (``/static``, three.js,
  the favicon): pages carry the session's CSRF token, account details or patient data, which
  no browser or proxy cache may keep.
- The session cookie is HttpOnly, SameSite=Lax, and Secure whenever the request came over
  HTTPS (directly, or through ``DICOMSTL_PROXY_HOPS`` proxies saying so).
"""

from __future__ import annotations

import math
import time

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limit, Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_talisman import Talisman

from dicomstl import apikeys
from dicomstl.settings import Settings
from web import login
from web.errors import answer

#: Where a browser may send a form to besides this site (Stripe's pages: Checkout and the
#: customer portal are reached by a redirect after a form, which CSP's form-action governs).
STRIPE_PAGES = ("https://checkout.stripe.com", "https://billing.stripe.com")
LIMITS_PREFIX = "dicomstl-limits"
#: Endpoints whose answers are the same public bytes for everyone: caches may keep them.
CACHEABLE = frozenset({"static", "three", "pages.favicon"})


class SessionCookies(SecureCookieSessionInterface):
    """The signed session cookie, marked Secure when this request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def api_key_identity() -> str:
    """The rate-limit identity of a request to the API: its live key's
    ``apikeys.rate_limit_id`` (part of the key's hash, never the key or its prefix), or the
    client's address for a request without a valid key (so made-up keys share one
    counter per address)."""
    key = login.request_key()
    return apikeys.rate_limit_id(key) if key is not None else get_remote_address()


def storage_uri(redis_url: str | None) -> str:
    """Flask-Limiter's storage for a REDIS_URL (``unix://`` becomes ``redis+unix://``)."""
    if not redis_url:
        return "memory://"
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url.removeprefix("unix://")
    return redis_url


def _limit(rate: str, endpoints: tuple[str, ...] = (), blueprint: str = "",
           by_key: bool = False, methods: tuple[str, ...] = ("POST",),
           what: str = "requests") -> Limit:
    def exempt() -> bool:
        if blueprint:
            return request.blueprint != blueprint or request.endpoint in ("api.openapi",)
        return request.endpoint not in endpoints

    def message() -> str:
        return (f"too many {what}: at most {rate.replace(';', ' and ')}; please wait and "
                "try again (Retry-After says how long)")

    return Limit(rate, key_function=api_key_identity if by_key else None,
                 exempt_when=exempt, methods=list(methods) if methods else None,
                 shared=bool(blueprint), scope=blueprint or None, error_message=message)


def install(app: Flask, settings: Settings) -> Limiter:
    """Rate limits, headers and cookies for ``app``. Call it before CSRF protection is set
    up, so a request over its limit is refused before its body is read."""
    app.session_interface = SessionCookies()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    limiter = Limiter(
        get_remote_address, app=app, storage_uri=storage_uri(settings.redis_url),
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        key_prefix=LIMITS_PREFIX, headers_enabled=False, swallow_errors=True,
        in_memory_fallback_enabled=True, strategy="fixed-window",
        default_limits=[
            _limit(settings.rate_login, ("accounts.login",), what="login attempts"),
            _limit(settings.rate_register, ("accounts.register",), what="registrations"),
            _limit(settings.rate_password_reset, ("accounts.reset_request",),
                   what="password reset requests"),
            _limit(settings.rate_contact, ("privacy.contact",), what="messages"),
            _limit(settings.rate_upload, ("pages.upload",), what="uploads"),
            _limit(settings.rate_api_submit, ("api.submit",), by_key=True,
                   what="API submissions"),
            _limit(settings.rate_api, blueprint="api", by_key=True, methods=(),
                   what="API calls"),
        ])

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded):
        """429 with ``Retry-After``: the seconds until the breached limit's window ends (only
        on this answer: Flask-Limiter's own headers would put it on every answer)."""
        limit = limiter.current_limit
        wait = max(1, math.ceil(limit.reset_at - time.time())) if limit else 60
        return answer(429, exc.description, {"Retry-After": str(wait)})

    @app.after_request
    def no_store(response):
        """Nothing but the public files is kept by a cache (errors included)."""
        if not (request.endpoint in CACHEABLE and response.status_code < 400) and \
                "no-store" not in response.headers.get("Cache-Control", ""):
            response.headers["Cache-Control"] = "no-store"
        return response

    form_targets = ["'self'", *(STRIPE_PAGES if settings.billing_enabled else ())]
    Talisman(app, force_https=False, session_cookie_secure=False,
             strict_transport_security=True, strict_transport_security_max_age=31_536_000,
             frame_options="DENY", referrer_policy="same-origin",
             content_security_policy={
                 "default-src": "'self'", "script-src": "'self'", "object-src": "'none'",
                 "base-uri": "'none'", "frame-ancestors": "'none'",
                 "form-action": " ".join(form_targets)},
             content_security_policy_nonce_in=["script-src"],
             permissions_policy={"camera": "()", "microphone": "()", "geolocation": "()"})
    return limiter
