"""Who may see, download, change and delete what: every route and method of the app's URL map,
for seven callers: a visitor without an account, user A (owner of organisation X), user B
(another account), M (a member of X), A's organisation's API key, a revoked key of X, and a
live key of B's organisation.

The table below must name every endpoint and method the app has: a new route fails this test
until its row says who may call it. Browsers send a valid CSRF token of their own session (an
attacker can always get one for themselves); API keys send their key and no cookie. Then:
missing CSRF tokens are 400, a rate limit is 429, and no credits is 402.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from rq import Queue, SimpleWorker

from dicomstl import apikeys, jobs, organisations
from dicomstl.db import Organisation, session_scope
from dicomstl.queue import connect
from tests.service.accounts_helpers import csrf, log_in, make_account
from tests.service.helpers import auth, file_parts

IDENTITIES = ("anonymous", "A", "B", "M", "key_A", "revoked", "key_B")
BROWSERS = ("A", "B", "M")
LOGGED_OUT = ("anonymous", "key_A", "revoked", "key_B")  # no login session
JSON = {"Accept": "application/json"}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class World:
    """The callers' clients and what the cases act on."""

    settings: object
    app: object
    clients: dict
    people: dict
    keys: dict
    done_job: str
    series: list
    counter: list

    def fresh(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]}"

    def job(self, options: dict | None = None) -> str:
        """A new queued job of organisation X."""
        part = self.settings.incoming_dir / self.fresh("part-")
        part.write_bytes(b"a job that never runs")
        job, _ = jobs.create_job(self.settings, f"org:{self.people['A'].org_id}",
                                 options or {}, [part], "interactive")
        return job.id

    def key_prefix(self) -> str:
        made = apikeys.create_key(self.settings.database_url, "spare",
                                  self.people["A"].org_id)
        return made.key.split("_")[1]

    def member(self) -> int:
        """A new member of X: their user id."""
        person = make_account(self.settings, self.fresh("member") + "@example.org")
        token = organisations.invite(self.settings.database_url, self.people["A"].org_id,
                                     self.people["A"].user_id, person.email)
        organisations.accept(self.settings.database_url, token, person.user_id)
        return person.user_id

    def invitation(self) -> tuple[int, str]:
        """An open invitation of X to an address none of the callers has."""
        token = organisations.invite(self.settings.database_url, self.people["A"].org_id,
                                     self.people["A"].user_id,
                                     self.fresh("guest") + "@example.org")
        return organisations.find_invitation(self.settings.database_url, token).id, token


@pytest.fixture
def world(settings, series) -> World:
    from web import create_app

    # payments on (Stripe unreachable: nothing leaves the machine), room in the free tier
    settings = replace(settings, stripe_secret_key="sk_test_matrix",
                       stripe_webhook_secret="whsec_matrix",
                       stripe_api_base="http://127.0.0.1:9", credit_packs="10:price_p10:9 EUR",
                       clinic_price_id="price_clinic", free_conversions_per_day=1000,
                       rate_register="1000 per hour", rate_password_reset="1000 per hour",
                       rate_contact="1000 per hour")
    app = create_app(settings)
    app.config["TESTING"] = True
    people = {"A": make_account(settings, "a@example.org", credits_=100),
              "B": make_account(settings, "b@example.org"),
              "M": make_account(settings, "m@example.org")}
    url = settings.database_url
    token = organisations.invite(url, people["A"].org_id, people["A"].user_id, "m@example.org")
    organisations.accept(url, token, people["M"].user_id)
    people["M"].org_id = people["A"].org_id
    with session_scope(url) as session:  # X is on the clinic plan, and a Stripe customer
        org = session.get(Organisation, people["A"].org_id)
        org.plan, org.plan_status, org.stripe_customer_id = "clinic", "active", "cus_matrix"
    key = apikeys.create_key(url, "X's PACS", people["A"].org_id, people["A"].user_id)
    revoked = apikeys.create_key(url, "old", people["A"].org_id)
    apikeys.revoke_key(url, revoked.key.split("_")[1])
    key_b = apikeys.create_key(url, "B's PACS", people["B"].org_id, people["B"].user_id)
    clients = {name: app.test_client() for name in IDENTITIES}
    for name in BROWSERS:
        assert log_in(clients[name], people[name]).status_code == 303
    # one converted job of X, for the routes that read a model
    parts = []
    for n, path in enumerate(series):  # create_job moves its parts: copies
        parts.append(settings.incoming_dir / f"part-done-{n}")
        parts[-1].write_bytes(path.read_bytes())
    done = jobs.create_job(settings, f"org:{people['A'].org_id}", {}, parts, "bulk")[0].id
    conn = connect(settings.redis_url)
    SimpleWorker([Queue("bulk", connection=conn)], connection=conn).work(burst=True)
    assert jobs.get_job(settings, done).state == "done"
    return World(settings, app, clients, people,
                 {"key_A": key.key, "revoked": revoked.key, "key_B": key_b.key}, done, series, [0])


# The table --------------------------------------------------------------------------------------

@dataclass
class Case:
    """A request to an endpoint and the status each caller must get."""

    method: str
    path: Callable[[World], str]
    expect: dict[str, int | tuple[int, ...]]
    data: Callable[[World], dict] | None = None
    json: dict | None = None


def everyone(status: int | tuple[int, ...]) -> dict:
    return dict.fromkeys(IDENTITIES, status)


def logged_in(status, others=302) -> dict:
    """Browsers with a login get ``status``; callers without one go to the login page."""
    return {**dict.fromkeys(BROWSERS, status), **dict.fromkeys(LOGGED_OUT, others)}


def x_only(status, b=404) -> dict:
    """Only X's people (A and M) reach it; B and callers without a login get 404."""
    return {"A": status, "M": status, "B": b, "anonymous": 404, "key_A": 404,
            "revoked": 404, "key_B": 404}


def key_only(status, key_b=404) -> dict:
    """Only X's live key reaches it; B's key gets ``key_b`` (X's jobs are not B's: 404)."""
    return {**dict.fromkeys(IDENTITIES, 401), "key_A": status, "key_B": key_b}


def key_or_session(status) -> dict:
    return {**dict.fromkeys(IDENTITIES, 401), "key_A": status, "A": status, "B": status,
            "M": status, "key_B": status}


def upload(w: World) -> dict:
    return {"files": file_parts(w.series[:3])}


TABLE: dict[str, Case] = {
    # public pages and files
    "pages.home": Case("GET", lambda w: "/", everyone(200)),
    "pages.api_docs": Case("GET", lambda w: "/api", everyone(200)),
    "pages.favicon": Case("GET", lambda w: "/favicon.ico", everyone(200)),
    "static": Case("GET", lambda w: "/static/style.css", everyone(200)),
    "three": Case("GET", lambda w: "/vendor/three/build/three.module.js", everyone(200)),
    "health.healthz": Case("GET", lambda w: "/healthz", everyone(200)),
    "health.readyz": Case("GET", lambda w: "/readyz", everyone(200)),
    "api.openapi": Case("GET", lambda w: "/api/v1/openapi.json", everyone(200)),
    "billing.pricing": Case("GET", lambda w: "/pricing", everyone(200)),
    "privacy.policy": Case("GET", lambda w: "/privacy", everyone(200)),
    "privacy.cookies": Case("GET", lambda w: "/cookies", everyone(200)),
    "privacy.contact": Case("POST", lambda w: "/contact", everyone(200), data=lambda w: {
        "email": "someone@example.org", "message": "a question"}),
    "privacy.contact GET": Case("GET", lambda w: "/contact", everyone(200)),
    # signing up and in: open to all, and telling nobody about other accounts
    "accounts.register": Case("POST", lambda w: "/register", everyone(200), data=lambda w: {
        "email": w.fresh("new") + "@example.org", "password": "a long password",
        "repeat": "a long password"}),
    "accounts.register GET": Case("GET", lambda w: "/register", everyone(200)),
    "accounts.login": Case("POST", lambda w: "/login", everyone(401), data=lambda w: {
        "email": "a@example.org", "password": "not the password"}),
    "accounts.login GET": Case("GET", lambda w: "/login", everyone(200)),
    "accounts.confirm": Case("GET", lambda w: "/confirm/not-a-token", everyone(400)),
    "accounts.resend_confirmation": Case("POST", lambda w: "/confirm", everyone(200),
                                         data=lambda w: {"email": "a@example.org"}),
    "accounts.resend_confirmation GET": Case("GET", lambda w: "/confirm", everyone(200)),
    "accounts.reset_request": Case("POST", lambda w: "/reset", everyone(200),
                                   data=lambda w: {"email": "a@example.org"}),
    "accounts.reset_request GET": Case("GET", lambda w: "/reset", everyone(200)),
    "accounts.reset": Case("GET", lambda w: "/reset/not-a-token", everyone(400)),
    "accounts.reset POST": Case("POST", lambda w: "/reset/not-a-token", everyone(400),
                                data=lambda w: {"password": "a new password",
                                                "repeat": "a new password"}),
    # one's own account (wrong passwords: the view is reached, nothing changes)
    "accounts.account": Case("GET", lambda w: "/account", logged_in(200)),
    "accounts.change_password": Case("POST", lambda w: "/account/password", logged_in(400),
                                     data=lambda w: {"pw-current": "wrong password!",
                                                     "pw-password": "another password",
                                                     "pw-repeat": "another password"}),
    "accounts.erase": Case("POST", lambda w: "/account/erase", logged_in(400),
                           data=lambda w: {"erase-password": "wrong password!"}),
    "accounts.create_key": Case("POST", lambda w: "/account/keys",
                                {**logged_in(201), "B": 402}, data=lambda w: {"name": "k"}),
    "accounts.rename_organisation": Case("POST", lambda w: "/account/organisation",
                                         {**logged_in(303), "M": 403},
                                         data=lambda w: {"name": "Clinic X"}),
    "accounts.invite": Case("POST", lambda w: "/account/members", {**logged_in(303), "M": 403},
                            data=lambda w: {"invite-email": w.fresh("inv") + "@example.org"}),
    "accounts.invitation": Case("GET", lambda w: f"/invitations/{w.invitation()[1]}",
                                logged_in(200)),
    # the invitation is to an address none of them has: refused, nobody joins
    "accounts.invitation POST": Case("POST", lambda w: f"/invitations/{w.invitation()[1]}",
                                     logged_in(409)),
    "billing.balance": Case("GET", lambda w: "/billing/balance", logged_in(200)),
    "billing.done": Case("GET", lambda w: "/billing/done", logged_in(200)),
    # Stripe is unreachable here: 503 means the purchase was allowed to start
    "billing.checkout": Case("POST", lambda w: "/billing/checkout",
                             {**logged_in(503), "A": 400, "M": 400},  # X's plan runs
                             data=lambda w: {"product": "clinic"}),
    "billing.portal": Case("POST", lambda w: "/billing/portal",
                           {**logged_in(503), "M": 403, "B": 400}),  # B bought nothing
    "billing.webhook": Case("POST", lambda w: "/billing/webhook", everyone(400),
                            data=lambda w: {"type": "invoice.paid"}),
    # X's things, named in the path
    "accounts.revoke_key": Case("POST", lambda w: f"/account/keys/{w.key_prefix()}/revoke",
                                {**logged_in(303), "B": 404}),
    "accounts.remove_member": Case("POST", lambda w: f"/account/members/{w.member()}/remove",
                                   {**logged_in(303), "M": 403, "B": 404}),
    "accounts.withdraw": Case(
        "POST", lambda w: f"/account/invitations/{w.invitation()[0]}/withdraw",
        {**logged_in(303), "M": 403, "B": 404}),
    # X's jobs in the browser
    "pages.upload": Case("POST", lambda w: "/upload", everyone(201), data=upload),
    "pages.job_page": Case("GET", lambda w: f"/jobs/{w.done_job}", x_only(200)),
    "pages.job_status": Case("GET", lambda w: f"/jobs/{w.done_job}/status", x_only(200)),
    "pages.download": Case("GET", lambda w: f"/jobs/{w.done_job}/download", x_only(200)),
    "pages.delete": Case("POST", lambda w: f"/jobs/{w.job()}/delete", x_only(303)),
    "pages.choose": Case("POST", lambda w: f"/jobs/{w.job()}/series", x_only(409),
                         data=lambda w: {"series": "1.2.3"}),
    "pages.choose_level": Case("POST", lambda w: f"/jobs/{w.job({'preview': True})}/level",
                               x_only(409), data=lambda w: {"level": "300"}),
    "pages.threshold_preview": Case(
        "GET", lambda w: f"/jobs/{w.job({'preview': True})}/preview", x_only(409)),
    "pages.threshold_slice": Case(
        "GET", lambda w: f"/jobs/{w.job({'preview': True})}/preview/axial.png", x_only(409)),
    # the API: X's key, never a revoked one; a browser only for its own account's data
    # B's organisation has no clinic plan: 402 for its key's uploads
    "api.submit": Case("POST", lambda w: "/api/v1/jobs", key_only(201, key_b=402),
                       data=upload),
    "api.list_jobs": Case("GET", lambda w: "/api/v1/jobs", key_only(200, key_b=200)),
    "api.get_job": Case("GET", lambda w: f"/api/v1/jobs/{w.done_job}", key_only(200)),
    "api.result": Case("GET", lambda w: f"/api/v1/jobs/{w.done_job}/result", key_only(200)),
    "api.delete": Case("DELETE", lambda w: f"/api/v1/jobs/{w.job()}", key_only(200)),
    "api.choose": Case("POST", lambda w: f"/api/v1/jobs/{w.job()}/series", key_only(409),
                       json={"series": "1.2.3"}),
    "api.choose_level": Case("POST",
                             lambda w: f"/api/v1/jobs/{w.job({'preview': True})}/level",
                             key_only(409), json={"level": 300}),
    "api.preview": Case("GET", lambda w: f"/api/v1/jobs/{w.job({'preview': True})}/preview",
                        key_only(409)),
    "api.preview_slice": Case(
        "GET", lambda w: f"/api/v1/jobs/{w.job({'preview': True})}/preview/coronal.png",
        key_only(409)),
    "api.account": Case("GET", lambda w: "/api/v1/account", key_or_session(200)),
    "api.export_account": Case("GET", lambda w: "/api/v1/account/export",
                               key_or_session(200)),
    # last: it ends the browsers' sessions
    "accounts.logout": Case("POST", lambda w: "/logout", everyone(303)),
}


def _call(w: World, who: str, case: Case, with_csrf: bool = True):
    client = w.clients[who]
    headers = dict(JSON) if case.path(w).startswith("/upload") else {}
    if who in w.keys:
        headers.update(auth(w.keys[who]))
    path = case.path(w)
    kwargs: dict = {"headers": headers}
    if case.json is not None:
        kwargs["json"] = case.json
    elif case.method == "POST":
        data = case.data(w) if case.data else {}
        if with_csrf and not path.startswith(("/api/", "/billing/webhook")):
            data["csrf_token"] = csrf(client)
        kwargs["data"] = data
        if any(isinstance(v, list) for v in data.values()):
            kwargs["content_type"] = "multipart/form-data"
    return path, client.open(path, method=case.method, **kwargs)


def test_the_table_names_every_route_and_method_of_the_app(world):
    routes = {(rule.endpoint, method) for rule in world.app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == {(name.split()[0], case.method) for name, case in TABLE.items()}


def test_each_caller_gets_what_the_table_says(world):
    wrong = []
    for endpoint, case in TABLE.items():
        for who in IDENTITIES:
            path, r = _call(world, who, case)
            expected = case.expect[who]
            expected = expected if isinstance(expected, tuple) else (expected,)
            if r.status_code not in expected:
                wrong.append(f"{endpoint} {case.method} {path} as {who}: {r.status_code}, "
                             f"expected {expected}")
            elif r.status_code == 302:
                assert "/login" in r.headers["Location"], (endpoint, who)
            assert r.status_code < 500 or r.status_code == 503, (endpoint, who)
    assert wrong == [], "\n".join(wrong)


def test_b_never_sees_a_byte_of_x(world):
    """What B's answers on X's job hold: nothing of it (not its state, not its model)."""
    b = world.clients["B"]
    for path in (f"/jobs/{world.done_job}", f"/jobs/{world.done_job}/status",
                 f"/jobs/{world.done_job}/download"):
        r = b.get(path)
        assert r.status_code == 404 and world.done_job.encode() not in r.data
    key_b = apikeys.create_key(world.settings.database_url, "B's", world.people["B"].org_id)
    r = b.get(f"/api/v1/jobs/{world.done_job}", headers=auth(key_b.key))
    assert r.status_code == 404
    assert world.done_job not in [j["id"] for j in b.get(
        "/api/v1/jobs", headers=auth(key_b.key)).json["jobs"]]


def test_every_browser_post_without_a_csrf_token_is_400(world):
    for endpoint, case in TABLE.items():
        path = case.path(world)
        if case.method != "POST" or path.startswith(("/api/", "/billing/webhook")):
            continue
        _path, r = _call(world, "A", case, with_csrf=False)
        assert r.status_code == 400, (endpoint, r.status_code)
        assert b"CSRF" in r.data, endpoint


def test_rate_limits_answer_429_with_retry_after(world):
    from web import create_app

    tight = replace(world.settings, rate_login="2 per minute", rate_api="3 per minute")
    app = create_app(tight)
    client = app.test_client()
    answers = [client.post("/login", data={"csrf_token": csrf(client, "/login"),
                                           "email": "a@example.org", "password": "no!"})
               for _ in range(3)]
    assert [r.status_code for r in answers] == [401, 401, 429]
    assert 0 < int(answers[2].headers["Retry-After"]) <= 61  # the window, rounded up
    assert b"too many login attempts" in answers[2].data
    # per key: X's key runs out, another key does not
    other = apikeys.create_key(world.settings.database_url, "another")
    codes = [client.get("/api/v1/jobs", headers=auth(world.keys["key_A"])).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert client.get("/api/v1/jobs", headers=auth(other.key)).status_code == 200


def test_no_credits_is_402(world):
    b = world.clients["B"]
    key_b = apikeys.create_key(world.settings.database_url, "B's", world.people["B"].org_id)
    r = b.post("/api/v1/jobs", data={"files": [(io.BytesIO(b"x" * 100), "part")]},
               content_type="multipart/form-data", headers=auth(key_b.key))
    # payments are on and B has no clinic plan: the bulk API is not B's yet
    assert r.status_code == 402 and "clinic plan" in r.json["error"]
    with session_scope(world.settings.database_url) as session:
        org = session.get(Organisation, world.people["B"].org_id)
        org.plan, org.plan_status = "clinic", "active"
    r = b.post("/api/v1/jobs", data={"files": [(io.BytesIO(b"x" * 100), "part")]},
               content_type="multipart/form-data", headers=auth(key_b.key))
    assert r.status_code == 402 and r.json["balance"] == 0 and r.json["needed"] == 1
    assert re.search(r"balance is 0", r.json["error"])
