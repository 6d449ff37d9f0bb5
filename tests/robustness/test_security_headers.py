"""Every answer the web app gives carries its security headers: each rule of the URL map
fetched with GET (paths filled with real objects: a converted job, an invitation, keys), as a
visitor, a logged-in user and an API key, and the error pages (404, 405, 413, 429, 500).

Checked on each answer: a Content-Security-Policy whose scripts need no ``unsafe-inline`` or
``unsafe-eval`` and that forbids framing, ``X-Content-Type-Options: nosniff``, a referrer
policy, the permissions policy, ``Cache-Control: no-store`` on every answer that is not a
public static file (pages carry the session's CSRF token, account details or patient data),
and session cookies that are HttpOnly, SameSite and, over HTTPS (through
``DICOMSTL_PROXY_HOPS``), Secure with HSTS.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest

from tests.service import test_authorization as matrix
from tests.service.accounts_helpers import csrf, log_in, make_account
from tests.service.helpers import auth
from tests.service.test_authorization import TABLE, World

world = matrix.world  # the authorisation matrix's world: accounts, keys, a converted job

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: Public files anyone may cache: the same bytes for everybody.
CACHEABLE = {"static", "three", "pages.favicon"}
CALLERS = ("anonymous", "A", "key_A")


def directives(policy: str) -> dict[str, list[str]]:
    """A Content-Security-Policy as {directive: sources}."""
    found = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            found[words[0].lower()] = words[1:]
    return found


def header_problems(r, cacheable: bool = False) -> list[str]:
    """What is missing or wrong in one answer's security headers."""
    problems = []
    csp = directives(r.headers.get("Content-Security-Policy", ""))
    scripts = csp.get("script-src", csp.get("default-src"))
    if scripts is None:
        problems.append("no CSP for scripts")
    elif {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(scripts):
        problems.append(f"CSP script-src too wide: {scripts}")
    if csp.get("default-src") != ["'self'"]:
        problems.append(f"CSP default-src: {csp.get('default-src')}")
    if csp.get("object-src") != ["'none'"]:
        problems.append("CSP object-src not 'none'")
    if csp.get("frame-ancestors") != ["'none'"] and r.headers.get("X-Frame-Options") != "DENY":
        problems.append("framing allowed")
    if r.headers.get("X-Content-Type-Options") != "nosniff":
        problems.append("no nosniff")
    if r.headers.get("Referrer-Policy") not in ("same-origin", "no-referrer",
                                                "strict-origin-when-cross-origin"):
        problems.append(f"Referrer-Policy {r.headers.get('Referrer-Policy')}")
    policy = r.headers.get("Permissions-Policy", "")
    if not all(f"{feature}=()" in policy for feature in ("camera", "microphone",
                                                          "geolocation")):
        problems.append(f"Permissions-Policy {policy!r}")
    if not cacheable and "no-store" not in r.headers.get("Cache-Control", ""):
        problems.append(f"Cache-Control {r.headers.get('Cache-Control')!r}")
    for cookie in r.headers.getlist("Set-Cookie"):
        flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
        if "httponly" not in flags or flags.get("samesite", "").lower() not in (
                "samesite=lax", "samesite=strict"):
            problems.append(f"cookie {cookie.split('=')[0]}: {sorted(flags)}")
    return problems


def test_every_route_answers_with_the_security_headers(world: World):
    wrong = []
    for endpoint, case in TABLE.items():
        path = case.path(world)
        for who in CALLERS:
            headers = auth(world.keys[who]) if who in world.keys else {}
            r = world.clients[who].get(path, headers=headers)
            assert r.status_code < 500, (endpoint, who, r.status_code)
            for problem in header_problems(r, endpoint in CACHEABLE and r.status_code == 200):
                wrong.append(f"GET {path} ({endpoint}) as {who} -> {r.status_code}: {problem}")
    assert wrong == [], "\n".join(wrong)


def test_error_pages_answer_with_the_security_headers(world: World):
    """404, 405, 413, 429 and 500, as an HTML page and as JSON."""
    from web import create_app

    settings = replace(world.settings, max_upload_bytes=10_000, rate_login="1 per minute")
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    client = app.test_client()
    token = csrf(client, "/login")
    answers = {
        "404": client.get("/no-such-page"),
        "404 json": client.get("/api/v1/no-such-thing"),
        "405": client.get("/upload"),
        "413": client.post("/upload", data={"csrf_token": token, "files": [
            (io.BytesIO(b"x" * 20_000), "part")]}, content_type="multipart/form-data"),
        "500": client.get("/boom"),
    }
    login = {"csrf_token": token, "email": "nobody@example.org", "password": "not it!"}
    client.post("/login", data=login)
    answers["429"] = client.post("/login", data=login)
    wrong = []
    for name, r in answers.items():
        assert r.status_code == int(name.split()[0]), (name, r.status_code)
        assert b"Traceback" not in r.data and b"RuntimeError" not in r.data
        wrong += [f"{name}: {p}" for p in header_problems(r)]
    assert wrong == [], "\n".join(wrong)


def test_session_cookies_are_httponly_samesite_and_secure_over_https(settings):
    from web import create_app

    person = make_account(settings, "cookie@example.org")
    plain = create_app(settings).test_client()
    r = log_in(plain, person)
    cookie = r.headers["Set-Cookie"]
    assert r.status_code == 303
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Strict-Transport-Security" not in r.headers  # plain HTTP: no HSTS promise
    # behind one proxy that says the client came over HTTPS
    proxied = create_app(replace(settings, proxy_hops=1)).test_client()
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    page = proxied.get("/login", headers=https)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.get_data(True)).group(1)
    r = proxied.post("/login", headers={**https, "Referer": "https://localhost/login"}, data={
        "csrf_token": token, "email": person.email, "password": person.password})
    assert r.status_code == 303
    for answer in (page, r):
        for cookie in answer.headers.getlist("Set-Cookie"):
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "max-age=31536000" in answer.headers["Strict-Transport-Security"]
    assert r.headers.getlist("Set-Cookie")
