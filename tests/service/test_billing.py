"""Payments through Stripe, with Stripe's API stood in for on loopback (``stripe_standin``)
and everything of ours real: the Flask app (and once gunicorn) on a real Redis and a real
database (SQLite, and PostgreSQL when it answers).

Webhooks are real event bodies signed with a test signing secret, posted to
``/billing/webhook``: each payment grants once however often it arrives, anything unsigned,
stale or unknown changes nothing, subscription events out of order cannot undo a newer state,
and the plan is what opens the bulk API. Checkout and the portal are driven by a logged-in
account through the real forms; what reached "Stripe" is read off the stand-in.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import requests
from sqlalchemy import select

from dicomstl import apikeys, credits, organisations
from dicomstl.db import CreditEntry, Job, StripeEvent, session_scope
from dicomstl.organisations import get_org
from tests.service.accounts_helpers import PASSWORD, csrf, log_in, make_account
from tests.service.helpers import api_submit, auth, free_port, serve, stop
from tests.service.stripe_standin import SECRET_KEY, StripeStandin, event, signature
from tests.service.stripe_standin import WEBHOOK_SECRET as SECRET
from tests.service.stripe_standin import stripe_standin as stripe_standin  # fixture

PACKS = "10:price_pack10:19 EUR,50:price_pack50:79 EUR"
PRICES = {"price_pack10": 1900, "price_pack50": 7900, "price_clinic": 24900}


def _with_stripe(settings, base: str):
    return replace(settings, stripe_secret_key=SECRET_KEY, stripe_webhook_secret=SECRET,
                   stripe_api_base=base, credit_packs=PACKS, clinic_price_id="price_clinic",
                   clinic_price_text="249 EUR a month")


@pytest.fixture
def paying(settings, stripe_standin: StripeStandin):
    """Settings with payments on, Stripe being the stand-in."""
    stripe_standin.prices.update(PRICES)
    return _with_stripe(settings, stripe_standin.url)


@pytest.fixture
def client(paying):
    from web import create_app

    app = create_app(paying)
    app.config["TESTING"] = True
    return app.test_client()


def _buyer(client, settings, address="buyer@clinic.example.org", credits_=0):
    person = make_account(settings, address, credits_)
    assert log_in(client, person).status_code == 303
    return person


def _buy(client, product: str):
    return client.post("/billing/checkout", data={"product": product,
                                                  "csrf_token": csrf(client, "/pricing")})


def _deliver(client, body: bytes, secret: str = SECRET, timestamp: int | None = None,
             header=...):
    """POST ``body`` to the webhook as Stripe would, signed with ``secret`` at
    ``timestamp`` (now), or with the Stripe-Signature ``header`` given (None: none)."""
    sig = signature(body, secret, timestamp) if header is ... else header
    headers = {"Stripe-Signature": sig} if sig is not None else {}
    return client.post("/billing/webhook", data=body, headers=headers,
                       content_type="application/json")


def _last_session_id(standin: StripeStandin) -> str:
    """The id of the checkout session made last."""
    return standin.calls("POST", "/v1/checkout/sessions")[-1].answer[1]["id"]


def _post_event(base: str, body: bytes) -> requests.Response:
    return requests.post(base + "/billing/webhook", data=body, timeout=30, headers={
        "Stripe-Signature": signature(body, SECRET), "Content-Type": "application/json"})


def _paid(session: dict, **changes) -> dict:
    """The stand-in's checkout session as Stripe completes it."""
    return {**session, "status": "complete", "payment_status": "paid", "url": None,
            "payment_intent": "pi_test_1", **changes}


def _ledger(url: str, org_id: int) -> list[tuple]:
    with session_scope(url) as session:
        return [tuple(r) for r in session.execute(
            select(CreditEntry.delta, CreditEntry.reason, CreditEntry.stripe_ref,
                   CreditEntry.amount_cents, CreditEntry.currency)
            .where(CreditEntry.org_id == org_id).order_by(CreditEntry.id))]


def _events(url: str) -> list[str]:
    with session_scope(url) as session:
        return sorted(session.scalars(select(StripeEvent.id)))


def _state(url: str, org_id: int) -> dict:
    """Everything a webhook may change, for "nothing changed" comparisons."""
    org = get_org(url, org_id)
    return {"credits": org.credits, "ledger": _ledger(url, org_id), "events": _events(url),
            "plan": (org.plan, org.plan_status, org.plan_event_at, org.stripe_subscription_id,
                     org.plan_period_end)}


def _subscription(customer: str, status: str, sub_id: str = "sub_test_1",
                  price: str = "price_clinic", period_end: int | None = None) -> dict:
    end = period_end or int(time.time()) + 30 * 86400
    return {"id": sub_id, "object": "subscription", "customer": customer, "status": status,
            "items": {"object": "list", "data": [{
                "id": "si_test_1", "object": "subscription_item", "quantity": 1,
                "price": {"id": price, "object": "price"}, "current_period_end": end}]}}


def _invoice(customer: str, invoice_id: str, price: str = "price_clinic",
             reason: str = "subscription_cycle") -> dict:
    """A paid invoice in the newer API shape (the price only under ``pricing``)."""
    return {"id": invoice_id, "object": "invoice", "customer": customer, "status": "paid",
            "amount_paid": PRICES[price], "currency": "eur", "subscription": "sub_test_1",
            "billing_reason": reason,
            "lines": {"object": "list", "data": [{
                "id": "il_test_1", "object": "line_item", "amount": PRICES[price],
                "pricing": {"type": "price_details",
                            "price_details": {"price": price, "product": "prod_test"}}}]}}


# Webhooks ----------------------------------------------------------------------------------

def test_a_paid_checkout_grants_its_credits_once_however_often_it_arrives(
        client, paying, stripe_standin):
    url = paying.database_url
    me = _buyer(client, paying)
    assert _buy(client, "pack-10").status_code == 303
    (session,) = stripe_standin.sessions.values()
    assert credits.balance(url, me.org_id) == 0  # the redirect to Checkout grants nothing

    completed = event("checkout.session.completed", _paid(session))
    r = _deliver(client, completed)
    assert r.status_code == 200 and r.json == {"received": True, "outcome": "granted"}
    assert credits.balance(url, me.org_id) == 10
    # Stripe delivers it again; and another event names the same payment
    again = _deliver(client, completed)
    assert again.status_code == 200 and again.json["outcome"] == "duplicate"
    other = event("checkout.session.async_payment_succeeded", _paid(session))
    r = _deliver(client, other)
    assert r.status_code == 200 and r.json["outcome"] == "duplicate"

    assert credits.balance(url, me.org_id) == 10
    assert _ledger(url, me.org_id) == [(10, "purchase", session["id"], 1900, "eur")]
    assert credits.ledger_total(url, me.org_id) == 10
    assert _events(url) == sorted(json.loads(b)["id"] for b in (completed, other))
    assert client.get("/billing/balance").json == {"credits": 10, "plan": "free"}

    # A payment that takes days (a bank debit): Checkout completes unpaid, the credits come
    # with the payment.
    _buy(client, "pack-50")
    later = stripe_standin.sessions[_last_session_id(stripe_standin)]
    pending = _deliver(client, event("checkout.session.completed",
                                     _paid(later, payment_status="unpaid")))
    assert pending.status_code == 200 and pending.json["outcome"] == "waiting"
    assert credits.balance(url, me.org_id) == 10
    r = _deliver(client, event("checkout.session.async_payment_succeeded", _paid(later)))
    assert r.json["outcome"] == "granted"
    assert _ledger(url, me.org_id) == [(10, "purchase", session["id"], 1900, "eur"),
                                       (50, "purchase", later["id"], 7900, "eur")]
    assert credits.balance(url, me.org_id) == credits.ledger_total(url, me.org_id) == 60


def test_webhooks_that_are_not_stripes_or_not_ours_are_refused_and_change_nothing(
        client, paying, stripe_standin):
    url = paying.database_url
    me = _buyer(client, paying, credits_=3)
    _buy(client, "pack-10")
    (session,) = stripe_standin.sessions.values()
    body = event("checkout.session.completed", _paid(session))
    before = _state(url, me.org_id)
    stale = int(time.time()) - 301
    refused = {
        "another secret": _deliver(client, body, secret="whsec_someone_else"),
        "stale": _deliver(client, body, timestamp=stale),
        "no header": _deliver(client, body, header=None),
        "garbled header": _deliver(client, body, header="v1=abc"),
        "another body": _deliver(client, body, header=signature(body.replace(
            b'"paid"', b'"unpaid"'), SECRET)),
        "unknown type": _deliver(client, event("charge.refunded", {
            "id": "ch_test_1", "object": "charge", "customer": session["customer"]})),
        "not an event": _deliver(client, b"not json at all"),
        # the endpoint is open to anyone: a body far larger than any Stripe event is
        # refused by its length, never buffered (the app's limit is the upload's, GiBs)
        "huge": _deliver(client, b"{" + b" " * (2 * 1024**2) + b"}"),
    }
    assert refused.pop("huge").status_code == 413
    for why, r in refused.items():
        assert r.status_code == 400, (why, r.status_code, r.data)
        assert r.json["error"], why
    assert "older than 5 minutes" in refused["stale"].json["error"]
    assert "charge.refunded" in refused["unknown type"].json["error"]
    assert _state(url, me.org_id) == before
    # the very same body, properly signed, is taken: it was the signature that was refused
    assert _deliver(client, body).json["outcome"] == "granted"
    assert credits.balance(url, me.org_id) == 13


def test_subscription_events_out_of_order_cannot_undo_a_newer_state(
        client, paying, stripe_standin):
    url = paying.database_url
    me = _buyer(client, paying)
    _buy(client, "clinic")
    (session,) = stripe_standin.sessions.values()
    customer, t0 = session["customer"], int(time.time()) - 100

    def deliver(kind, status, at, sub_id="sub_test_1"):
        r = _deliver(client, event(f"customer.subscription.{kind}",
                                   _subscription(customer, status, sub_id), created=at))
        assert r.status_code == 200, r.data
        return r.json["outcome"]

    linked = _deliver(client, event("checkout.session.completed",
                                    _paid(session, subscription="sub_test_1")))
    assert linked.json["outcome"] == "linked"
    assert deliver("created", "active", t0) == "plan"
    org = get_org(url, me.org_id)
    assert (org.plan, org.plan_status, org.stripe_subscription_id) == (
        "clinic", "active", "sub_test_1")
    assert org.plan_period_end is not None
    assert deliver("deleted", "canceled", t0 + 20) == "plan"
    assert get_org(url, me.org_id).plan == "free"
    ended = _state(url, me.org_id)
    # An older update arrives late, then one stamped the same second as the cancellation:
    # neither brings the plan back.
    assert deliver("updated", "active", t0 + 10) == "stale"
    assert deliver("updated", "active", t0 + 20) == "stale"
    after = _state(url, me.org_id)
    assert after["plan"] == ended["plan"] and after["plan"][:2] == ("free", "canceled")
    # A new subscription later is the plan again.
    assert deliver("created", "active", t0 + 30, sub_id="sub_test_2") == "plan"
    assert get_org(url, me.org_id).plan == "clinic"
    # Subscriptions to something else than the clinic price are not ours to apply.
    r = _deliver(client, event("customer.subscription.deleted", _subscription(
        customer, "canceled", "sub_other", price="price_unknown"), created=t0 + 40))
    assert r.json["outcome"] == "ignored" and get_org(url, me.org_id).plan == "clinic"
    # A second clinic subscription (two checkouts at once) that ends leaves the running one.
    r = _deliver(client, event("customer.subscription.deleted", _subscription(
        customer, "canceled", "sub_twin"), created=t0 + 50))
    assert r.json["outcome"] == "ignored" and get_org(url, me.org_id).plan == "clinic"


def test_each_paid_plan_invoice_grants_the_monthly_allowance_once(client, paying,
                                                                   stripe_standin):
    url = paying.database_url
    me = _buyer(client, paying)
    _buy(client, "clinic")
    customer = next(iter(stripe_standin.sessions.values()))["customer"]
    monthly = paying.clinic_monthly_credits
    first = event("invoice.paid", _invoice(customer, "in_test_month1"))
    assert _deliver(client, first).json["outcome"] == "granted"
    assert _deliver(client, first).json["outcome"] == "duplicate"
    # the same invoice in another event (e.g. resent by hand from the dashboard)
    assert _deliver(client, event("invoice.paid", _invoice(customer, "in_test_month1"))
                    ).json["outcome"] == "duplicate"
    assert credits.balance(url, me.org_id) == monthly
    # the next month's invoice
    assert _deliver(client, event("invoice.paid", _invoice(customer, "in_test_month2"))
                    ).json["outcome"] == "granted"
    # a credit pack's invoice (Checkout makes one) is not the plan's allowance, nor is a
    # proration when the subscription changes mid-month
    assert _deliver(client, event("invoice.paid", _invoice(customer, "in_test_pack",
                                                           "price_pack10"))
                    ).json["outcome"] == "ignored"
    assert _deliver(client, event("invoice.paid", _invoice(
        customer, "in_test_prorate", reason="subscription_update"))).json["outcome"] == "ignored"
    assert _ledger(url, me.org_id) == [
        (monthly, "plan", "in_test_month1", 24900, "eur"),
        (monthly, "plan", "in_test_month2", 24900, "eur")]
    assert credits.balance(url, me.org_id) == credits.ledger_total(url, me.org_id) == 2 * monthly


def test_the_clinic_plan_is_what_opens_the_bulk_api(client, paying, stripe_standin, series):
    url = paying.database_url
    me = _buyer(client, paying, credits_=5)
    key = apikeys.create_key(url, "PACS", me.org_id, me.user_id)
    r = api_submit(client, key, series)
    assert r.status_code == 402, r.data
    assert "clinic plan" in r.json["error"] and r.json["pricing_url"] == "/pricing"
    assert credits.balance(url, me.org_id) == 5

    _buy(client, "clinic")
    customer = next(iter(stripe_standin.sessions.values()))["customer"]
    t0 = int(time.time())
    _deliver(client, event("customer.subscription.created",
                           _subscription(customer, "active"), created=t0))
    r = api_submit(client, key, series)
    assert r.status_code == 201, r.data
    assert credits.balance(url, me.org_id) == 4
    assert client.get("/api/v1/account", headers=auth(key)).json["plan"] == "clinic"
    # the plan ends: the key is refused again, before its upload is read
    _deliver(client, event("customer.subscription.deleted",
                           _subscription(customer, "canceled"), created=t0 + 1))
    r = api_submit(client, key, series)
    assert r.status_code == 402 and "clinic plan" in r.json["error"]
    with session_scope(url) as session:
        assert len(session.scalars(select(Job.id)).all()) == 1
    assert credits.balance(url, me.org_id) == 4


# Checkout and the portal -------------------------------------------------------------------

def test_checkout_makes_the_customer_once_and_sends_the_buyer_to_stripe(
        client, paying, stripe_standin):
    url = paying.database_url
    r = client.post("/billing/checkout", data={"product": "pack-10",  # a visitor
                                               "csrf_token": csrf(client, "/")})
    assert r.status_code in (302, 303) and "/login" in r.headers["Location"]
    me = _buyer(client, paying)
    # without the form's token (a request forged by another site)
    assert client.post("/billing/checkout", data={"product": "pack-10"}).status_code == 400
    assert stripe_standin.requests == []

    r = _buy(client, "pack-10")
    assert r.status_code == 303
    (made,) = stripe_standin.calls("POST", "/v1/customers")
    customer = made.answer[1]["id"]
    assert made.params == {"email": me.email, "metadata": {"org_id": str(me.org_id)}}
    assert made.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert made.headers["idempotency-key"].startswith(f"dicomstl-customer-{me.org_id}-")
    assert get_org(url, me.org_id).stripe_customer_id == customer

    (sent,) = stripe_standin.calls("POST", "/v1/checkout/sessions")
    assert stripe_standin.requests.index(made) < stripe_standin.requests.index(sent)
    assert sent.form["mode"] == "payment"
    assert sent.form["line_items[0][price]"] == "price_pack10"
    assert sent.form["line_items[0][quantity]"] == "1"
    assert sent.form["customer"] == customer
    assert sent.form["success_url"] == \
        "http://localhost/billing/done?session_id={CHECKOUT_SESSION_ID}"
    assert sent.form["cancel_url"] == "http://localhost/pricing?cancelled=1"
    assert sent.params["metadata"] == {"org_id": str(me.org_id), "product": "pack-10",
                                       "credits": "10"}
    session = sent.answer[1]
    assert r.headers["Location"] == session["url"] == \
        f"http://localhost/billing/done?session_id={session['id']}"
    back = client.get(r.headers["Location"])  # Checkout sends the buyer back here
    assert back.status_code == 200
    assert credits.balance(url, me.org_id) == 0  # only the webhook grants

    # The second purchase, the plan, reuses the customer.
    r = _buy(client, "clinic")
    assert r.status_code == 303
    assert len(stripe_standin.calls("POST", "/v1/customers")) == 1
    second = stripe_standin.calls("POST", "/v1/checkout/sessions")[1]
    assert second.form["customer"] == customer and second.form["mode"] == "subscription"
    assert second.form["line_items[0][price]"] == "price_clinic"
    assert second.params["subscription_data"] == {"metadata": {"org_id": str(me.org_id)}}
    assert r.headers["Location"] == second.answer[1]["url"]
    # Something not on the pricing page is refused before Stripe hears of it.
    r = _buy(client, "pack-1000")
    assert r.status_code == 400
    assert len(stripe_standin.calls("POST", "/v1/checkout/sessions")) == 2


def test_with_payments_off_the_pricing_page_says_so_and_buying_is_503(app, settings):
    """A server without Stripe keys (and so without packs or a plan configured either)."""
    assert not settings.billing_enabled
    client = app.test_client()
    me = _buyer(client, settings)
    page = client.get("/pricing").get_data(as_text=True)
    assert 'id="payments-off"' in page and "Payments are off" in page
    assert 'class="buy"' not in page  # no buy buttons
    for product in ("pack-10", "clinic"):
        r = _buy(client, product)
        assert r.status_code == 503, (product, r.status_code)
        assert "payments are off on this server" in r.get_data(as_text=True)
    r = client.post("/billing/portal", data={"csrf_token": csrf(client, "/pricing")})
    assert r.status_code == 503 and "payments are off" in r.get_data(as_text=True)
    body = event("checkout.session.completed", {"id": "cs_1", "customer": "cus_1"})
    r = client.post("/billing/webhook", data=body, content_type="application/json",
                    headers={"Stripe-Signature": signature(body, SECRET)})
    assert r.status_code == 503 and "payments are off" in r.json["error"]
    assert credits.balance(settings.database_url, me.org_id) == 0


def test_when_stripe_cannot_be_reached_nothing_is_charged(settings, stripe_standin):
    from web import create_app

    nowhere = _with_stripe(settings, f"http://127.0.0.1:{free_port()}")
    client = create_app(nowhere).test_client()
    me = _buyer(client, nowhere)
    r = _buy(client, "pack-10")
    assert r.status_code == 503 and "nothing was charged" in r.get_data(as_text=True)
    assert get_org(nowhere.database_url, me.org_id).stripe_customer_id is None

    # Stripe answers, with errors: the client retries, with the same idempotency key.
    failing = create_app(_with_stripe(settings, stripe_standin.url)).test_client()
    assert log_in(failing, me).status_code == 303
    stripe_standin.refuse(500)
    r = _buy(failing, "pack-10")
    assert r.status_code == 503 and "nothing was charged" in r.get_data(as_text=True)
    tries = stripe_standin.calls("POST", "/v1/customers")
    assert len(tries) == 3 and len({t.headers["idempotency-key"] for t in tries}) == 1
    assert stripe_standin.calls("POST", "/v1/checkout/sessions") == []
    stripe_standin.refuse(None)
    assert _buy(failing, "pack-10").status_code == 303  # and later it works


def test_the_portal_is_for_an_owner_with_a_customer(client, paying, stripe_standin):
    url = paying.database_url
    owner = _buyer(client, paying)

    def portal(c):
        return c.post("/billing/portal", data={"csrf_token": csrf(c, "/pricing")})

    r = portal(client)
    assert r.status_code == 400 and "nothing to manage yet" in r.get_data(as_text=True)
    _buy(client, "clinic")
    customer = get_org(url, owner.org_id).stripe_customer_id
    r = portal(client)
    assert r.status_code == 303
    (sent,) = stripe_standin.calls("POST", "/v1/billing_portal/sessions")
    assert sent.form == {"customer": customer, "return_url": "http://localhost/account"}
    assert r.headers["Location"] == sent.answer[1]["url"]

    # A member of the clinic is not shown the portal.
    member = make_account(paying, "nurse@clinic.example.org")
    token = organisations.invite(url, owner.org_id, owner.user_id, member.email)
    organisations.accept(url, token, member.user_id)
    theirs = client.application.test_client()
    assert log_in(theirs, member).status_code == 303
    assert portal(theirs).status_code == 403
    assert len(stripe_standin.calls("POST", "/v1/billing_portal/sessions")) == 1


def test_erasing_an_account_deletes_its_stripe_customer(client, paying, stripe_standin):
    """Deleting the customer at Stripe ends its subscriptions there; the payments stay as
    invoice references."""
    me = _buyer(client, paying)
    _buy(client, "pack-10")
    (session,) = stripe_standin.sessions.values()
    _deliver(client, event("checkout.session.completed", _paid(session)))
    page = client.get("/account").get_data(as_text=True)
    token = re.search(r'name="erase-csrf_token"[^>]*value="([^"]+)"', page).group(1)
    r = client.post("/account/erase", data={"erase-csrf_token": token,
                                            "erase-password": PASSWORD})
    assert r.status_code == 200, r.get_data(as_text=True)
    (deleted,) = stripe_standin.calls("DELETE", "/v1/customers/*")
    assert deleted.path == f"/v1/customers/{session['customer']}"
    assert deleted.answer[0] == 200 and stripe_standin.customers == {}
    assert get_org(paying.database_url, me.org_id) is None
    with session_scope(paying.database_url) as db:
        kept = db.execute(select(CreditEntry.org_id, CreditEntry.stripe_ref)).all()
    assert [tuple(k) for k in kept] == [(None, session["id"])]


# The whole purchase, through gunicorn -------------------------------------------------------

@pytest.fixture
def paying_web(service_env, settings, stripe_standin, tmp_path):
    """The web app under gunicorn with payments on (Stripe: the stand-in, which completes
    each checkout by sending its webhooks here); its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stripe_standin.prices.update(PRICES)
    env = {**service_env, **stripe_standin.env(webhook_url=base + "/billing/webhook"),
           "DICOMSTL_CREDIT_PACKS": PACKS,
           "DICOMSTL_CLINIC_PRICE_ID": "price_clinic",
           "DICOMSTL_CLINIC_PRICE_TEXT": "249 EUR a month"}
    proc = serve(env, tmp_path / "web.log", port)
    yield base
    stop(proc)


def _token(browser: requests.Session, page: str) -> str:
    text = browser.get(page, timeout=10).text
    return text.split('name="csrf_token"', 1)[1].split('value="', 1)[1].split('"', 1)[0]


@pytest.mark.slow
def test_buying_credits_and_the_plan_end_to_end(paying_web, settings, stripe_standin, series):
    url = settings.database_url
    me = make_account(settings, "buyer@clinic.example.org")
    browser = requests.Session()
    r = browser.post(paying_web + "/login", timeout=10, allow_redirects=False, data={
        "csrf_token": _token(browser, paying_web + "/login"), "email": me.email,
        "password": PASSWORD})
    assert r.status_code == 303

    def buy(product):
        return browser.post(paying_web + "/billing/checkout", timeout=30,
                            allow_redirects=False, data={
                                "product": product,
                                "csrf_token": _token(browser, paying_web + "/pricing")})

    r = buy("pack-50")
    assert r.status_code == 303
    assert r.headers["Location"].startswith(paying_web + "/billing/done?session_id=cs_test_")
    assert browser.get(r.headers["Location"], timeout=10).status_code == 200
    (paid,) = stripe_standin.wait_for_deliveries(1)
    assert (paid.event["type"], paid.status) == ("checkout.session.completed", 200)
    assert browser.get(paying_web + "/billing/balance", timeout=10).json() == {
        "credits": 50, "plan": "free"}

    r = buy("clinic")
    assert r.status_code == 303
    sent = stripe_standin.wait_for_deliveries(4)[1:]
    assert [(d.event["type"], d.status) for d in sent] == [
        ("checkout.session.completed", 200), ("customer.subscription.created", 200),
        ("invoice.paid", 200)]
    monthly = settings.clinic_monthly_credits
    assert browser.get(paying_web + "/billing/balance", timeout=10).json() == {
        "credits": 50 + monthly, "plan": "clinic"}
    assert "Your organisation has the clinic plan" in browser.get(paying_web + "/pricing",
                                                                  timeout=10).text
    r = buy("clinic")  # from a page opened before: not twice
    assert r.status_code == 400 and "running already" in r.text
    assert len(stripe_standin.sessions) == 2
    # Stripe delivers an event again (its answer was lost): nothing more is granted.
    r = _post_event(paying_web, json.dumps(sent[2].event).encode())
    assert r.status_code == 200 and r.json()["outcome"] == "duplicate"
    assert credits.balance(url, me.org_id) == credits.ledger_total(url, me.org_id) == \
        50 + monthly

    # One more pack, its events delivered many times over at once, as two event types.
    stripe_standin.webhook_url = None
    assert buy("pack-10").status_code == 303
    session = stripe_standin.sessions[_last_session_id(stripe_standin)]
    completed = event("checkout.session.completed", _paid(session))
    bodies = [completed] * 6 + [event("checkout.session.async_payment_succeeded",
                                      _paid(session)) for _ in range(6)]
    start = threading.Barrier(len(bodies))

    def deliver(body):
        start.wait()
        return _post_event(paying_web, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(deliver, bodies))
    outcomes = [a.json().get("outcome") if a.status_code == 200 else a.status_code
                for a in answers]
    assert outcomes.count("granted") == 1, outcomes
    assert set(outcomes) <= {"granted", "duplicate", 409}, outcomes
    for body, a in zip(bodies, answers, strict=True):
        if a.status_code == 409:  # Stripe delivers it again later
            assert _post_event(paying_web, body).json()["outcome"] == "duplicate"
    assert credits.balance(url, me.org_id) == credits.ledger_total(url, me.org_id) == \
        60 + monthly
    # With the plan running the organisation's API key works and takes a credit.
    key = apikeys.create_key(url, "PACS", me.org_id, me.user_id)
    with_files = [("files", (p.name, p.read_bytes())) for p in series]
    r = requests.post(paying_web + "/api/v1/jobs", files=with_files, headers=auth(key),
                      timeout=30)
    assert r.status_code == 201, r.text
    assert credits.balance(url, me.org_id) == 60 + monthly - 1



def test_subscriptions_at_a_former_clinic_price_still_count(client, paying, stripe_standin):
    """A price rise is a new Stripe price: subscribers at the old one keep their plan and
    monthly credits while the old id is listed in DICOMSTL_CLINIC_FORMER_PRICE_IDS."""
    from web import create_app

    later = replace(paying, clinic_price_id="price_clinic_2026",
                    clinic_former_price_ids="price_clinic")
    app = create_app(later)
    app.config["TESTING"] = True
    client = app.test_client()
    me = _buyer(client, later)
    _buy(client, "clinic")
    (call,) = stripe_standin.calls("POST", "/v1/checkout/sessions")
    assert call.form["line_items[0][price]"] == "price_clinic_2026"  # new buyers: new price
    customer = call.form["customer"]
    r = _deliver(client, event("customer.subscription.updated",
                               _subscription(customer, "active")))  # at the old price
    assert r.json["outcome"] == "plan" and get_org(later.database_url, me.org_id).plan == "clinic"
    r = _deliver(client, event("invoice.paid", _invoice(customer, "in_test_old_price")))
    assert r.json["outcome"] == "granted"
