"""A stand-in for Stripe's API on 127.0.0.1, for tests: the one fake the service tests allow
(Stripe is a true external boundary). It answers the ``stripe`` client as Stripe would, for
what ``dicomstl.billing`` calls, records every request, and can complete a checkout by
sending the signed webhook events Stripe would send.

Use it through the ``stripe_standin`` fixture (a started ``StripeStandin``, stopped after
the test; import the fixture into a test module or a conftest), or ``with StripeStandin() as
standin:``. Point the service at it with ``stripe_api_base=standin.url``
(``DICOMSTL_STRIPE_API_BASE``).

Endpoints (form-encoded bodies with bracket keys, as the ``stripe`` client sends them; JSON
answers shaped like Stripe's objects):

- ``POST /v1/customers`` -> a ``customer`` (``cus_test_…``).
- ``DELETE /v1/customers/<id>`` -> ``{"id", "object": "customer", "deleted": true}``; an
  unknown id is 404 ``resource_missing``.
- ``POST /v1/checkout/sessions`` -> a ``checkout.session`` (``cs_test_…``) whose ``url`` is
  its ``success_url`` with ``{CHECKOUT_SESSION_ID}`` replaced by its id (a browser following
  it never leaves the service's own origin), ``amount_total`` from ``prices`` (cents per
  unit, by price id; ``DEFAULT_AMOUNT`` otherwise) times the quantity, ``currency`` "eur".
- ``POST /v1/billing_portal/sessions`` -> a ``billing_portal.session`` (``bps_test_…``)
  whose ``url`` is its ``return_url`` plus ``portal_session=<id>`` (again our own origin).
- anything else: 404 ``invalid_request_error``.

As at Stripe, a request without ``Authorization: Bearer sk_…`` is 401, and one with an
``Idempotency-Key`` seen before gets the first answer again (the same customer, the same
session), or 400 ``idempotency_error`` when its method, path or parameters differ.

Attributes and methods for tests:

- ``url``: the base to give the client (``http://127.0.0.1:<port>``).
- ``env(webhook_url=None)``: the ``DICOMSTL_STRIPE_*`` variables for a service process
  (gunicorn) pointed at the stand-in with the test keys ``SECRET_KEY`` and
  ``WEBHOOK_SECRET``; with ``webhook_url`` (``<base>/billing/webhook``, known once the port
  is chosen) checkouts complete themselves. Add ``DICOMSTL_CREDIT_PACKS`` and
  ``DICOMSTL_CLINIC_PRICE_ID`` for products. In-process: ``replace(settings,
  stripe_secret_key=SECRET_KEY, stripe_webhook_secret=WEBHOOK_SECRET,
  stripe_api_base=standin.url, …)``.
- ``requests``: every request, in order, as ``Recorded`` (``method``, ``path``, ``form``:
  the decoded body as flat bracket keys, e.g. ``form["line_items[0][price]"]``, ``params``:
  the same nested, e.g. ``params["metadata"]["org_id"]``, ``headers``: names in lower case,
  e.g. ``headers["idempotency-key"]``, ``headers["authorization"]``, and ``answer``: the
  status and JSON it was answered). ``calls(method, path)`` filters them.
- ``customers``, ``sessions``, ``portal_sessions``: what was made, by id.
- ``refuse(status, kind)``: answer every following API request with that Stripe error
  (e.g. 402 ``card_error``, 500 ``api_error``); ``refuse(None)`` stops.
- Auto-completion: with ``webhook_url`` and ``webhook_secret`` set (any time, e.g. once the
  web is up), each checkout session created is completed ``webhook_delay_s`` later, from a
  background thread, by POSTing the signed events Stripe would send to ``webhook_url``:
  mode payment: ``checkout.session.completed`` (status complete, payment_status paid,
  amount_total, currency, the session's metadata, a ``payment_intent``); mode subscription:
  ``checkout.session.completed`` (with a new ``sub_test_…`` id), then
  ``customer.subscription.created`` (status active, the price in ``items``), then
  ``invoice.paid`` (``in_test_…``, a line with the price, in the API's older and newer
  shapes). Each delivery is appended to ``deliveries`` as ``Delivery`` (``event``: the
  event dict, ``status``: our answer's status, or None when it could not be sent);
  ``wait_for_deliveries(n)`` waits for n of them.

Helpers: ``event(type, obj, created=None, id=None) -> bytes`` (a webhook body) and
``signature(payload, secret, timestamp=None) -> str`` (its ``Stripe-Signature`` header,
``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<payload>">``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

DEFAULT_AMOUNT = 1000  # cents per unit of a price not in ``prices``
#: Test keys for a service pointed at the stand-in (``StripeStandin.env``).
SECRET_KEY = "sk_test_dicomstl_standin"
WEBHOOK_SECRET = "whsec_test_dicomstl_standin_0123456789"


def event(type: str, obj: dict, created: int | None = None, id: str | None = None) -> bytes:
    """The JSON body of a Stripe webhook event of ``type`` about ``obj``."""
    return json.dumps({
        "id": id or "evt_test_" + secrets.token_hex(12), "object": "event",
        "api_version": "2025-09-30.clover", "created": int(time.time()) if created is None
        else created, "livemode": False, "pending_webhooks": 1, "type": type,
        "request": {"id": None, "idempotency_key": None}, "data": {"object": obj},
    }).encode()


def signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send with ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def nest(pairs: list[tuple[str, str]]) -> dict:
    """Form pairs with bracket keys (``a[b][0][c]=v``) as nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *(rest.rstrip("]").split("][") if rest else [])]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [lists(node[k]) for k in sorted(node, key=int)]
        return {k: lists(v) for k, v in node.items()}

    return lists(root)


@dataclass
class Recorded:
    """One request to the stand-in and what it answered."""

    method: str
    path: str
    form: dict[str, str]
    params: dict
    headers: dict[str, str]
    answer: tuple[int, dict] | None = None


@dataclass
class Delivery:
    event: dict
    status: int | None


@dataclass
class StripeStandin:
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_delay_s: float = 0.3
    prices: dict[str, int] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict] = field(default_factory=dict)
    sessions: dict[str, dict] = field(default_factory=dict)
    portal_sessions: dict[str, dict] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._refusal: tuple[int, str] | None = None
        self._by_idempotency: dict[str, tuple[tuple, int, dict]] = {}
        self._threads: list[threading.Thread] = []
        self._line_items: dict[str, list[dict]] = {}
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                split = urlsplit(self.path)
                pairs = parse_qsl(body or split.query, keep_blank_values=True)
                rec = Recorded(self.command, split.path, dict(pairs), nest(pairs),
                               {k.lower(): v for k, v in self.headers.items()})
                status, answer = standin._answer(rec)
                rec.answer = (status, answer)
                with standin._lock:
                    standin.requests.append(rec)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_test_" + secrets.token_hex(8))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._serving: threading.Thread | None = None

    # Running ---------------------------------------------------------------------------

    def start(self) -> StripeStandin:
        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._serving.start()
        return self

    def stop(self) -> None:
        for t in list(self._threads):
            t.join(10)
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StripeStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # For tests ---------------------------------------------------------------------------

    def env(self, webhook_url: str | None = None) -> dict[str, str]:
        """The environment that points a service process at the stand-in, payments on
        (``SECRET_KEY``, ``WEBHOOK_SECRET``); with ``webhook_url`` checkouts complete
        themselves by webhooks to it. Products (``DICOMSTL_CREDIT_PACKS``,
        ``DICOMSTL_CLINIC_PRICE_ID``) are the caller's to add."""
        self.webhook_secret = WEBHOOK_SECRET
        if webhook_url is not None:
            self.webhook_url = webhook_url
        return {"DICOMSTL_STRIPE_SECRET_KEY": SECRET_KEY,
                "DICOMSTL_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "DICOMSTL_STRIPE_API_BASE": self.url}

    def calls(self, method: str, path: str) -> list[Recorded]:
        """The requests with this method and path (``path`` may end in ``*``)."""
        with self._lock:
            found = list(self.requests)
        if path.endswith("*"):
            return [r for r in found if r.method == method and r.path.startswith(path[:-1])]
        return [r for r in found if r.method == method and r.path == path]

    def refuse(self, status: int | None, kind: str = "api_error") -> None:
        """Answer every following request with a Stripe error (None: answer normally)."""
        self._refusal = None if status is None else (status, kind)

    def wait_for_deliveries(self, n: int, timeout_s: float = 20) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.deliveries)} webhook deliveries, not {n}: "
                                     f"{self.deliveries}")
            time.sleep(0.05)
        return list(self.deliveries)

    # The API -----------------------------------------------------------------------------

    def _answer(self, rec: Recorded) -> tuple[int, dict]:
        if self._refusal is not None:
            status, kind = self._refusal
            return status, _error(kind, "refused by the test's Stripe stand-in")
        if not rec.headers.get("authorization", "").startswith("Bearer sk_"):
            return 401, _error("invalid_request_error", "Invalid API Key provided")
        key = rec.headers.get("idempotency-key")
        with self._lock:
            if key and key in self._by_idempotency:
                earlier, status, obj = self._by_idempotency[key]
                if earlier != (rec.method, rec.path, rec.form):
                    return 400, _error("idempotency_error", "Keys for idempotent requests "
                                       "can only be used with the same parameters they were "
                                       "first used with.")
                return status, obj
            status, obj = self._route(rec)
            if key:
                self._by_idempotency[key] = ((rec.method, rec.path, rec.form), status, obj)
        if status == 200 and obj.get("object") == "checkout.session" and self.webhook_url:
            t = threading.Thread(target=self._complete, args=(dict(obj),), daemon=True)
            self._threads.append(t)
            t.start()
        return status, obj

    def _route(self, rec: Recorded) -> tuple[int, dict]:
        p, now = rec.params, int(time.time())
        if (rec.method, rec.path) == ("POST", "/v1/customers"):
            obj = {"id": "cus_test_" + secrets.token_hex(8), "object": "customer",
                   "created": now, "email": p.get("email"), "livemode": False,
                   "metadata": p.get("metadata", {})}
            self.customers[obj["id"]] = obj
            return 200, obj
        if rec.method == "DELETE" and rec.path.startswith("/v1/customers/"):
            cid = rec.path.rsplit("/", 1)[1]
            if self.customers.pop(cid, None) is None:
                return 404, _error("invalid_request_error", f"No such customer: '{cid}'",
                                   code="resource_missing")
            return 200, {"id": cid, "object": "customer", "deleted": True}
        if (rec.method, rec.path) == ("POST", "/v1/checkout/sessions"):
            sid = "cs_test_" + secrets.token_hex(12)
            items = p.get("line_items", [])
            amount = sum(self.prices.get(i.get("price"), DEFAULT_AMOUNT) *
                         int(i.get("quantity", 1)) for i in items)
            obj = {"id": sid, "object": "checkout.session", "created": now,
                   "mode": p.get("mode"), "customer": p.get("customer"),
                   "client_reference_id": p.get("client_reference_id"),
                   "metadata": p.get("metadata", {}), "success_url": p.get("success_url"),
                   "cancel_url": p.get("cancel_url"), "amount_total": amount,
                   "currency": "eur", "status": "open", "payment_status": "unpaid",
                   "payment_intent": None, "subscription": None, "livemode": False,
                   "url": str(p.get("success_url", "")).replace("{CHECKOUT_SESSION_ID}", sid)}
            self.sessions[sid] = obj
            self._line_items[sid] = items
            return 200, obj
        if (rec.method, rec.path) == ("POST", "/v1/billing_portal/sessions"):
            bid = "bps_test_" + secrets.token_hex(8)
            back = str(p.get("return_url", ""))
            obj = {"id": bid, "object": "billing_portal.session", "created": now,
                   "customer": p.get("customer"), "return_url": back, "livemode": False,
                   "url": back + ("&" if "?" in back else "?") + f"portal_session={bid}"}
            self.portal_sessions[bid] = obj
            return 200, obj
        return 404, _error("invalid_request_error",
                           f"Unrecognized request URL ({rec.method}: {rec.path})")

    # Completing a checkout -----------------------------------------------------------------

    def _complete(self, session: dict) -> None:
        time.sleep(self.webhook_delay_s)
        items = self._line_items.get(session["id"], [])
        done = {**session, "status": "complete", "payment_status": "paid", "url": None}
        if session["mode"] != "subscription":
            done["payment_intent"] = "pi_test_" + secrets.token_hex(8)
            self._send("checkout.session.completed", done)
            return
        sub_id, now = "sub_test_" + secrets.token_hex(8), int(time.time())
        price = items[0]["price"] if items else None
        amount = session["amount_total"]
        done["subscription"] = sub_id
        self._send("checkout.session.completed", done)
        period_end = now + 30 * 86400
        self._send("customer.subscription.created", {
            "id": sub_id, "object": "subscription", "customer": session["customer"],
            "status": "active", "created": now, "cancel_at_period_end": False,
            "metadata": session.get("metadata", {}), "livemode": False,
            "items": {"object": "list", "data": [{
                "id": "si_test_" + secrets.token_hex(6), "object": "subscription_item",
                "price": {"id": price, "object": "price", "recurring": {"interval": "month"}},
                "quantity": 1, "current_period_start": now,
                "current_period_end": period_end}]}})
        self._send("invoice.paid", {
            "id": "in_test_" + secrets.token_hex(8), "object": "invoice",
            "customer": session["customer"], "subscription": sub_id, "status": "paid",
            "amount_paid": amount, "currency": "eur", "billing_reason":
            "subscription_create", "livemode": False,
            "lines": {"object": "list", "data": [{
                "id": "il_test_" + secrets.token_hex(6), "object": "line_item",
                "amount": amount, "price": {"id": price, "object": "price"},
                "pricing": {"type": "price_details", "price_details": {"price": price}},
                "period": {"start": now, "end": period_end}}]}})

    def _send(self, type: str, obj: dict) -> None:
        body = event(type, obj)
        try:
            status = requests.post(self.webhook_url, data=body, timeout=10, headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": signature(body, self.webhook_secret or "")}).status_code
        except requests.RequestException:
            status = None
        self.deliveries.append(Delivery(json.loads(body), status))


def _error(kind: str, message: str, code: str | None = None) -> dict:
    return {"error": {"type": kind, "message": message, "code": code}}


@pytest.fixture
def stripe_standin() -> Iterator[StripeStandin]:
    """A started Stripe stand-in (no webhook URL until the test sets one), stopped after."""
    with StripeStandin() as standin:
        yield standin
