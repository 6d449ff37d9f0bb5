"""Paying for an upload: an organisation's credits, a free conversion, or nothing (an
operator's key).

- A browser: the account's organisation pays in credits when its balance covers the upload
  (``credits.cost``); otherwise, and for a visitor without an account, the free tier
  (``free_tier``: a few small conversions a day per address).
- An API key of an organisation: credits only, and only while the clinic plan runs (on a
  server with payments on). An operator's key (no organisation) pays nothing.

``precheck`` runs before the body is read, from the headers alone, so a client with nothing
left is answered 402 before it sends a large upload; the charge itself is taken when the job
is stored (``jobs.create_job``), atomically. A refusal is 402 with what is missing and a link
to the pricing page (JSON: ``balance``, ``needed``, ``pricing_url``).
"""

from __future__ import annotations

from flask import Flask, current_app, request, url_for

from dicomstl import apikeys, credits, free_tier, jobs
from dicomstl.credits import Charge, NoCredits
from dicomstl.free_tier import FreeTierRefused
from dicomstl.organisations import plan_live
from dicomstl.settings import Settings
from web import login
from web.errors import answer

UPLOAD_ENDPOINTS = ("pages.upload", "api.submit")
#: The multipart framing around an upload's files, at most (the precheck's size test).
FORM_OVERHEAD = 1024**2
NO_PLAN = ("the bulk API comes with the clinic plan, which is not running for this key's "
           "organisation; see the pricing page")


class PlanRequired(Exception):
    """The API key's organisation has no running clinic plan."""


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _ip() -> str:
    return request.remote_addr or "unknown"


def refusal(exc: Exception):
    """The 402 answer for a refused charge."""
    body: dict = {"error": str(exc), "pricing_url": url_for("billing.pricing")}
    if isinstance(exc, NoCredits):
        body.update(balance=exc.balance, needed=exc.needed)
    if request.path.startswith("/api/"):
        return body, 402
    return answer(402, str(exc), link=(url_for("billing.pricing"), "See the prices"),
                  extra=body)


def for_browser(upload_bytes: int) -> Charge:
    """How the logged-in account or the visitor pays for an upload of ``upload_bytes``:
    credits when the balance covers it, else a free conversion (taken here). NoCredits (an
    account) or FreeTierRefused (a visitor) when neither does."""
    settings = _settings()
    me = login.account()
    if me is None:
        return Charge(free_quota_key=free_tier.take(settings, _ip(), upload_bytes))
    needed = credits.cost(settings, upload_bytes)
    balance = me.org.credits  # read at this request's start: the take is what counts
    if balance >= needed:
        return Charge(org_id=me.org.id, credits=needed)
    try:
        return Charge(free_quota_key=free_tier.take(settings, _ip(), upload_bytes))
    except FreeTierRefused:
        raise NoCredits(balance, needed) from None


def for_key(key, upload_bytes: int, check_balance: bool = True) -> Charge:
    """How an API key pays for an upload: nothing (an operator's key) or its organisation's
    credits. PlanRequired, or NoCredits when ``check_balance`` finds them short (the view
    leaves that to the atomic take when the job is stored)."""
    settings = _settings()
    if key.org_id is None:
        return Charge()
    org = key.org  # read with the key (``apikeys.authenticate``), once per request
    if settings.billing_enabled and not plan_live(org):
        raise PlanRequired(NO_PLAN)
    needed = credits.cost(settings, upload_bytes)
    if check_balance and org.credits < needed:
        raise NoCredits(org.credits, needed)
    return Charge(org_id=org.id, credits=needed)


def precheck():
    """Before an upload's body is read: 402 when, by its Content-Length, it cannot be paid."""
    if request.endpoint not in UPLOAD_ENDPOINTS or request.method != "POST":
        return None
    settings = _settings()
    size = max(0, (request.content_length or 0) - FORM_OVERHEAD)
    try:
        if request.endpoint == "api.submit":
            key = login.request_key()
            retry = request.headers.get("Idempotency-Key")
            if key is None or (retry and jobs.find_idempotent(
                    settings.database_url, apikeys.owner_of(key), retry[:200])):
                return None  # no key: the API answers 401; a retry: its job is paid for
            for_key(key, size)
            return None
        me = login.account()
        if me is None:
            free_tier.check(settings, _ip(), size)
            return None
        needed = credits.cost(settings, size)
        if me.org.credits < needed:
            try:
                free_tier.check(settings, _ip(), size)
            except FreeTierRefused:
                raise NoCredits(me.org.credits, needed) from None
    except (NoCredits, FreeTierRefused, PlanRequired) as exc:
        return refusal(exc)
    return None


def register(app: Flask) -> None:
    """Install ``precheck`` (call it before CSRF protection, which reads the body)."""
    app.before_request(precheck)
