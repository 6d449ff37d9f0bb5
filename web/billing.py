"""Pricing and payments: the pricing page, Stripe Checkout for credit packs and the clinic
plan, the customer portal for plan changes and cancellation, and Stripe's webhook (the only
thing that grants credits or changes a plan: ``dicomstl.billing``).

Without Stripe keys the pricing page says payments are off, and buying answers 503; the
rest of the service works (the operator can grant credits: ``dicomstl credits grant``).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
)
from flask_login import login_required
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import RequestEntityTooLarge

from dicomstl import billing as core
from dicomstl.billing import BillingError, BillingOff, BillingUnavailable, WebhookRejected
from dicomstl.organisations import plan_live
from dicomstl.settings import Settings
from web import login
from web.forms import ActionForm
from web.links import absolute

billing = Blueprint("billing", __name__)
#: The largest webhook body read: Stripe's events are a few kilobytes (their lists are cut
#: short), and the endpoint is open to anyone, so the app's limit (the upload's) is far too
#: much to buffer.
WEBHOOK_MAX_BYTES = 1024**2
PAYMENTS_OFF = ("payments are off on this server (no Stripe keys are set); the operator can "
                "grant credits with `dicomstl credits grant`")


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@billing.get("/pricing")
def pricing():
    settings = _settings()
    me = login.account()
    return render_template(
        "pricing.html", packs=settings.packs, billing=settings.billing_enabled,
        clinic=bool(settings.clinic_price_id), clinic_text=settings.clinic_price_text,
        clinic_credits=settings.clinic_monthly_credits,
        credit_mb=settings.credit_upload_bytes / 1024**2,
        free_per_day=settings.free_conversions_per_day,
        free_mb=settings.free_upload_bytes / 1024**2, me=me,
        plan_live=bool(me and plan_live(me.org)), form=ActionForm(),
        cancelled=request.args.get("cancelled") == "1")


def _to_stripe(page: Callable[[], str], unreachable: str):
    """A 303 to the Stripe page ``page`` makes, or the error that kept it from being made."""
    try:
        return redirect(page(), 303)
    except BillingOff:
        abort(503, PAYMENTS_OFF)
    except BillingError as exc:
        abort(400, str(exc))
    except BillingUnavailable:
        abort(503, f"the payment provider could not be reached; {unreachable}")


@billing.post("/billing/checkout")
@login_required
def checkout():
    """Start a purchase: to Stripe Checkout (303)."""
    me = login.account()
    return _to_stripe(lambda: core.checkout(
        _settings(), me.org.id, me.email, request.form.get("product", ""),
        success_url=absolute("billing.done") + "?session_id={CHECKOUT_SESSION_ID}",
        cancel_url=absolute("billing.pricing", cancelled=1)),
        "nothing was charged. Please try again in a minute")


@billing.post("/billing/portal")
@login_required
def portal():
    """Manage the plan and see invoices: to Stripe's customer portal (303)."""
    me = login.account()
    if not me.owner:
        abort(403, "only an owner of the organisation manages its billing")
    return _to_stripe(lambda: core.portal(_settings(), me.org.id, absolute("accounts.account")),
                      "please try again in a minute")


@billing.get("/billing/done")
@login_required
def done():
    """Back from Checkout: the credits come once Stripe's webhook confirms the payment
    (``billing.js`` follows the balance)."""
    return render_template("billing_done.html", balance=login.account().org.credits)


@billing.get("/billing/balance")
@login_required
def balance():
    """The organisation's credits and plan now (read with the account at this request's
    start)."""
    org = login.account().org
    return jsonify(credits=org.credits, plan=org.plan)


@billing.post("/billing/webhook")
def webhook():
    """Stripe's events (no session, no CSRF token: the Stripe-Signature proves them). A body
    over ``WEBHOOK_MAX_BYTES`` is refused (413) without being read."""
    request.max_content_length = WEBHOOK_MAX_BYTES
    try:
        outcome = core.handle_webhook(_settings(), request.get_data(),
                                      request.headers.get("Stripe-Signature"))
    except BillingOff:
        return {"error": PAYMENTS_OFF}, 503
    except WebhookRejected as exc:
        return {"error": str(exc)}, 400
    except IntegrityError:  # the same payment applied by a concurrent delivery: Stripe retries
        return {"error": "a concurrent delivery is being applied; deliver again"}, 409
    except RequestEntityTooLarge:
        return {"error": f"a Stripe event is at most {WEBHOOK_MAX_BYTES // 1024} KiB"}, 413
    return {"received": True, "outcome": outcome}
