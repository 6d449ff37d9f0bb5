"""No page of the service makes a request to another origin: a real Chromium (Playwright) goes
through every page a user sees (home, an upload with a real conversion, the job page with
its 3D preview rendered, pricing, register, login, account, billing, privacy, cookies,
contact, API docs, an error page) and records every request its pages and workers make and
every websocket they open; each one's origin must be the service's own.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.service.accounts_helpers import PASSWORD, make_account
from tests.service.test_browser import ARGS, CHROMIUM


@pytest.fixture
def service_env(service_env, stripe_standin):
    """Payments on (so the pricing and billing pages are there), Stripe on loopback."""
    return {**service_env, **stripe_standin.env(),
            "DICOMSTL_CREDIT_PACKS": "10:price_pack10:19 EUR",
            "DICOMSTL_CLINIC_PRICE_ID": "price_clinic"}


@pytest.fixture
def chromium() -> str:
    from tests.conftest import require_tool

    require_tool(CHROMIUM)
    return CHROMIUM


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme), parts.netloc


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_page_requests_only_its_own_origin(chromium, web_url, worker, settings, series):
    from playwright.sync_api import expect, sync_playwright

    person = make_account(settings, "pages@example.org", credits_=5)
    worker()
    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        context.on("request", lambda r: requested.append(r.url))  # pages and their workers
        context.on("page", lambda p: p.on("websocket", lambda ws: requested.append(ws.url)))
        page = context.new_page()
        page.on("websocket", lambda ws: requested.append(ws.url))
        page.on("worker", lambda w: requested.append(w.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # the form, an upload and its conversion, the preview rendered
        page.goto(web_url + "/")
        page.set_input_files("#file-input", [str(p) for p in series])
        page.click("#submit")
        page.wait_for_url("**/jobs/*", timeout=60_000)
        page.wait_for_selector("canvas#preview[data-rendered]", timeout=120_000)
        expect(page.locator("#state")).to_have_text("done")
        seen = {"/", "/jobs/"}
        for path in ("/pricing", "/register", "/privacy", "/cookies", "/contact", "/api",
                     "/reset", "/no-such-page"):
            answer = page.goto(web_url + path)
            assert answer.status == (404 if path == "/no-such-page" else 200), path
            seen.add(path)
        # logged in: account and billing
        page.goto(web_url + "/login")
        page.fill("input[name=email]", person.email)
        page.fill("input[name=password]", PASSWORD)
        page.click("#login")
        page.wait_for_url("**/account")
        for path in ("/", "/billing/balance", "/pricing", "/account"):
            assert page.goto(web_url + path).status == 200, path
        browser.close()
    assert errors == []
    assert len(requested) > 30 and len(seen) == 10
    own = origin(web_url)
    foreign = sorted({url for url in requested
                      if not url.startswith(("data:", "blob:", "about:"))
                      and origin(url) != own})
    assert foreign == []
    # the 3D viewer's code came from the service itself
    assert any("/vendor/three/" in url for url in requested)
