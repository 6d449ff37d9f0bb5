"""Payments through Stripe: Checkout Sessions to buy, the customer portal to change or cancel
the clinic plan, and the webhook that is the only thing granting credits or changing a plan.

Payments are on only when ``DICOMSTL_STRIPE_SECRET_KEY`` and
``DICOMSTL_STRIPE_WEBHOOK_SECRET`` are set. We keep the Stripe customer id of each
organisation, the subscription's id and state, and in the credit ledger each payment's
Stripe reference and amount: never card data.

A webhook's ``Stripe-Signature`` is verified with ``stripe.Webhook.construct_event`` (its
default tolerance, 5 minutes); each event id is recorded once (``stripe_events``), and a
payment's reference is unique in the ledger, so an event delivered twice, or two events for
one payment, grant once. Subscription events carry Stripe's ``created`` time and an older
one than the last applied changes nothing, so events out of order cannot undo a newer state.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

import stripe
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomstl import credits
from dicomstl.db import Organisation, StripeEvent, session_scope, utcnow
from dicomstl.organisations import PLAN_LIVE, get_org
from dicomstl.settings import Settings

log = logging.getLogger(__name__)

#: What the pricing page sells: ``pack-<credits>`` for each credit pack, and the plan.
CLINIC = "clinic"
#: Subscription states that are final: a subscription in one never runs again.
ENDED = ("canceled", "incomplete_expired")
STRIPE_TIMEOUT_S = 20


class BillingOff(Exception):
    """Payments are not configured on this server."""


class BillingError(Exception):
    """A purchase cannot be started (the message says why, for the user)."""


class BillingUnavailable(Exception):
    """Stripe could not be reached or refused the request: nothing was charged."""


class WebhookRejected(Exception):
    """A webhook that is not a valid, signed event of a type this endpoint takes."""


def products(settings: Settings) -> dict[str, str]:
    """What can be bought: product name -> the Stripe price id."""
    items = {f"pack-{p.credits}": p.price_id for p in settings.packs}
    if settings.clinic_price_id:
        items[CLINIC] = settings.clinic_price_id
    return items


def _client(settings: Settings) -> stripe.StripeClient:
    if not settings.billing_enabled:
        raise BillingOff()
    bases = {"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else None
    return stripe.StripeClient(settings.stripe_secret_key, base_addresses=bases,
                               http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_S),
                               max_network_retries=2)


def _customer(settings: Settings, client: stripe.StripeClient, org_id: int, email: str) -> str:
    """The organisation's Stripe customer, made on its first purchase."""
    org = get_org(settings.database_url, org_id)
    if org.stripe_customer_id:
        return org.stripe_customer_id
    made = client.v1.customers.create(
        params={"email": email, "metadata": {"org_id": str(org_id)}},
        options={"idempotency_key":
                 f"dicomstl-customer-{org_id}-{int(org.created_at.timestamp())}"})
    with session_scope(settings.database_url) as session:
        session.execute(update(Organisation).where(
            Organisation.id == org_id, Organisation.stripe_customer_id.is_(None)).values(
            stripe_customer_id=made.id))
    return get_org(settings.database_url, org_id).stripe_customer_id


def checkout(settings: Settings, org_id: int, email: str, product: str, success_url: str,
             cancel_url: str) -> str:
    """A Stripe Checkout Session for ``product`` (``products``); the URL to send the buyer
    to. BillingOff when payments are off (whatever the product); BillingError for an
    unknown product or a plan already running; BillingUnavailable when Stripe fails."""
    if not settings.billing_enabled:
        raise BillingOff()
    prices = products(settings)
    if product not in prices:
        raise BillingError("that is not something on the pricing page")
    org = get_org(settings.database_url, org_id)
    if product == CLINIC and org.plan == CLINIC and org.plan_status in PLAN_LIVE:
        raise BillingError("the clinic plan is running already; change it under Billing")
    metadata = {"org_id": str(org_id), "product": product}
    params: dict = {"line_items": [{"price": prices[product], "quantity": 1}],
                    "success_url": success_url, "cancel_url": cancel_url,
                    "client_reference_id": str(org_id)}
    if product == CLINIC:
        params.update(mode="subscription", metadata=metadata,
                      subscription_data={"metadata": {"org_id": str(org_id)}})
    else:
        pack = next(p for p in settings.packs if f"pack-{p.credits}" == product)
        params.update(mode="payment", metadata={**metadata, "credits": str(pack.credits)},
                      invoice_creation={"enabled": True})
    try:
        client = _client(settings)
        params["customer"] = _customer(settings, client, org_id, email)
        session = client.v1.checkout.sessions.create(params=params)
    except stripe.StripeError as exc:
        log.warning("Stripe refused or failed a checkout: %s %s", type(exc).__name__,
                    getattr(exc, "code", None) or "")
        raise BillingUnavailable() from None
    return session.url


def portal(settings: Settings, org_id: int, return_url: str) -> str:
    """The Stripe customer portal (plan changes, cancellation, invoices); its URL.
    BillingOff when payments are off; BillingError when the organisation never bought."""
    if not settings.billing_enabled:
        raise BillingOff()
    org = get_org(settings.database_url, org_id)
    if not org.stripe_customer_id:
        raise BillingError("there is nothing to manage yet: buy credits or the plan first")
    try:
        session = _client(settings).v1.billing_portal.sessions.create(
            params={"customer": org.stripe_customer_id, "return_url": return_url})
    except stripe.StripeError as exc:
        log.warning("Stripe refused or failed a portal session: %s %s", type(exc).__name__,
                    getattr(exc, "code", None) or "")
        raise BillingUnavailable() from None
    return session.url


def delete_customer(settings: Settings, customer_id: str) -> bool:
    """Delete a customer at Stripe (an erased account; it ends its subscriptions there);
    False when Stripe could not be reached (the erasure goes on: the log says so)."""
    try:
        _client(settings).v1.customers.delete(customer_id)
    except stripe.InvalidRequestError:  # gone already
        return True
    except (stripe.StripeError, BillingOff) as exc:
        log.warning("could not delete an erased account's Stripe customer: %s",
                    type(exc).__name__)
        return False
    return True


# The webhook ---------------------------------------------------------------------------------

def handle_webhook(settings: Settings, payload: bytes, signature: str | None,
                   now: dt.datetime | None = None) -> str:
    """Verify and apply one webhook; what it did (``granted``, ``plan``, ``duplicate``,
    ``stale``, ``ignored``, …). WebhookRejected when the signature or the event is not
    acceptable (nothing changed); BillingOff when payments are off. A database conflict
    with a concurrent delivery of the same payment raises IntegrityError: answered 409,
    Stripe delivers it again and it then finds the payment granted."""
    if not settings.billing_enabled:
        raise BillingOff()
    try:
        stripe.Webhook.construct_event(payload, signature, settings.stripe_webhook_secret)
    except stripe.SignatureVerificationError:
        raise WebhookRejected("the Stripe-Signature header is missing, does not match the "
                              "body, or is older than 5 minutes") from None
    except ValueError:
        raise WebhookRejected("the body is not a Stripe event") from None
    event = json.loads(payload)
    kind = event.get("type")
    handler = HANDLERS.get(kind)
    if handler is None:
        raise WebhookRejected(f"events of type {str(kind)[:80]!r} are not taken here")
    try:
        event_id, created, obj = str(event["id"]), int(event["created"]), event["data"]["object"]
    except (KeyError, TypeError, ValueError):
        raise WebhookRejected("the event lacks its id, time or object") from None
    url = settings.database_url
    with session_scope(url) as session:
        if session.get(StripeEvent, event_id) is not None:
            return "duplicate"
    try:
        with session_scope(url) as session:
            session.add(StripeEvent(id=event_id, type=kind, created=created,
                                    received_at=now or utcnow()))
            session.flush()
            outcome = handler(settings, session, obj, created)
    except IntegrityError:
        with session_scope(url) as session:
            if session.get(StripeEvent, event_id) is not None:
                return "duplicate"  # delivered twice at the same moment
        raise
    log.info("Stripe event %s applied: %s", kind, outcome)
    return outcome


def _org_for(session: Session, obj: dict) -> Organisation | None:
    """The organisation an object is about: by its Stripe customer."""
    customer = obj.get("customer")
    if not isinstance(customer, str):
        return None
    return session.scalar(select(Organisation).where(
        Organisation.stripe_customer_id == customer).with_for_update())


def _checkout_completed(settings: Settings, session: Session, obj: dict, _created: int) -> str:
    org = _org_for(session, obj)
    if org is None:
        log.warning("a completed checkout for no known organisation (erased?)")
        return "ignored"
    if obj.get("mode") == "subscription":
        if isinstance(obj.get("subscription"), str):
            org.stripe_subscription_id = obj["subscription"]
        return "linked"
    if obj.get("mode") != "payment" or obj.get("payment_status") != "paid":
        return "waiting"  # an asynchronous payment: async_payment_succeeded follows
    try:
        n = int((obj.get("metadata") or {})["credits"])
    except (KeyError, ValueError):
        log.warning("a paid checkout without a credit count in its metadata")
        return "ignored"
    granted = credits.grant(session, org.id, n, "purchase", stripe_ref=str(obj["id"]),
                            amount_cents=obj.get("amount_total"), currency=obj.get("currency"))
    return "granted" if granted else "duplicate"


def _prices_of_invoice(obj: dict) -> set[str]:
    """The price ids on an invoice's lines (the API's older and newer shapes)."""
    found = set()
    for line in (obj.get("lines") or {}).get("data") or []:
        price = line.get("price")
        if isinstance(price, dict) and price.get("id"):
            found.add(price["id"])
        details = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
        if isinstance(details, str):
            found.add(details)
    return found


#: Invoices of a subscription that pay for a month of it (not a proration or a manual one).
MONTHLY_REASONS = ("subscription_create", "subscription_cycle")


def _invoice_paid(settings: Settings, session: Session, obj: dict, _created: int) -> str:
    if not settings.clinic_price_ids & _prices_of_invoice(obj):
        return "ignored"  # not the clinic plan's
    if obj.get("billing_reason") not in MONTHLY_REASONS or not obj.get("amount_paid"):
        return "ignored"  # a proration, a manual or a zero invoice: no month of credits
    org = _org_for(session, obj)
    if org is None:
        log.warning("a paid plan invoice for no known organisation (erased?)")
        return "ignored"
    granted = credits.grant(session, org.id, settings.clinic_monthly_credits, "plan",
                            stripe_ref=str(obj["id"]), amount_cents=obj.get("amount_paid"),
                            currency=obj.get("currency"))
    return "granted" if granted else "duplicate"


def _subscription(settings: Settings, session: Session, obj: dict, created: int) -> str:
    items = (obj.get("items") or {}).get("data") or []
    prices = {(item.get("price") or {}).get("id") for item in items}
    if not settings.clinic_price_ids & prices:
        return "ignored"
    org = _org_for(session, obj)
    if org is None:
        log.warning("a subscription event for no known organisation (erased?)")
        return "ignored"
    if org.plan_event_at is not None and created < org.plan_event_at:
        return "stale"  # a newer event was applied already
    if org.stripe_subscription_id == obj.get("id") and org.plan_status in ENDED:
        return "stale"  # an ended subscription never runs again (same-second events)
    status = str(obj.get("status") or "")
    if org.stripe_subscription_id not in (None, obj.get("id")) and \
            org.plan_status in PLAN_LIVE and status not in PLAN_LIVE:
        return "ignored"  # a second subscription ended; the running one still counts
    org.plan = CLINIC if status in PLAN_LIVE else "free"
    org.plan_status = status
    org.stripe_subscription_id = str(obj.get("id"))
    end = obj.get("current_period_end") or next(
        (item.get("current_period_end") for item in items if item.get("current_period_end")),
        None)
    org.plan_period_end = dt.datetime.fromtimestamp(int(end), dt.UTC) if end else None
    org.plan_event_at = created
    return "plan"


HANDLERS: dict[str, Callable[[Settings, Session, dict, int], str]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "invoice.paid": _invoice_paid,
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.deleted": _subscription,
}
