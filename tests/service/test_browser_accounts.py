"""A real browser (Debian's Chromium, driven by Playwright) through the whole account:
register, confirm by the link from the mail folder, log in, buy credits (the Stripe stand-in
completes the checkout and sends the signed webhook to the real service), convert a real
series, see the credits go down, export the data, erase the account. Every request the pages
make goes to the service's own origin.

Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.service.accounts_helpers import link_in, mails
from tests.service.stripe_standin import stripe_standin  # noqa: F401 (a fixture)
from tests.service.test_browser import ARGS, ARTIFACTS, CHROMIUM, SHOT_TIMEOUT_MS

WEBHOOK_SECRET = "whsec_browser_test"
PASSWORD = "a long and secret password"


@pytest.fixture
def service_env(service_env, stripe_standin):  # noqa: F811 (the stand-in fixture)
    """The service with payments on, against the Stripe stand-in."""
    return {**service_env, "DICOMSTL_STRIPE_SECRET_KEY": "sk_test_browser",
            "DICOMSTL_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DICOMSTL_STRIPE_API_BASE": stripe_standin.url,
            "DICOMSTL_CREDIT_PACKS": "10:price_pack10:19 EUR,50:price_pack50:79 EUR",
            "DICOMSTL_CLINIC_PRICE_ID": "price_clinic",
            "DICOMSTL_CLINIC_PRICE_TEXT": "249 EUR a month"}


@pytest.fixture
def chromium() -> str:
    from tests.conftest import require_tool

    require_tool(CHROMIUM)
    return CHROMIUM


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_register_buy_convert_export_erase(chromium, shared_dicom, web_url, worker, settings,
                                            stripe_standin, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    stripe_standin.webhook_url = web_url + "/billing/webhook"
    stripe_standin.webhook_secret = WEBHOOK_SECRET
    series = shared_dicom / "ct-session-mixed" / "S2010"
    files = sorted(str(p) for p in series.iterdir() if p.name != "DIRFILE")
    origin = urlsplit(web_url)
    requested: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    worker()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(accept_downloads=True, viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda request: requested.append(request.url))

        # register, and confirm with the link the service mailed
        page.goto(web_url + "/register")
        page.fill("input[name=email]", "Browser.User@example.org")
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=repeat]", PASSWORD)
        page.click("#register")
        assert page.inner_text("#message-title") == "Check your e-mail"
        (msg,) = mails(settings, "browser.user@example.org")
        page.goto(web_url + link_in(msg, "/confirm/"))
        assert page.url.endswith("/login") and "confirmed" in page.inner_text("main")

        # log in
        page.fill("input[name=email]", "browser.user@example.org")
        page.fill("input[name=password]", PASSWORD)
        page.click("#login")
        page.wait_for_url("**/account")
        assert page.inner_text("#credits") == "0"

        # buy 10 credits: Checkout, then back here while Stripe's webhook grants them
        page.goto(web_url + "/pricing")
        page.click("#pack-10 button.buy")
        page.wait_for_url("**/billing/done?session_id=cs_test_*")
        # (Playwright's expect polls from outside: the page's CSP forbids its eval)
        expect(page.locator("#balance")).to_have_text("10", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "billing-done.png"), timeout=SHOT_TIMEOUT_MS)
        (checkout,) = stripe_standin.calls("POST", "/v1/checkout/sessions")
        assert checkout.form["line_items[0][price]"] == "price_pack10"
        assert [d.status for d in stripe_standin.deliveries] == [200]

        # convert a real series: one credit
        page.goto(web_url + "/")
        assert page.inner_text("#credits") == "10"
        page.set_input_files("#file-input", files)
        page.select_option("select[name=preset]", "bone")
        page.click("#submit")
        page.wait_for_url("**/jobs/*", timeout=60_000)
        job_id = page.url.rsplit("/", 1)[1]
        expect(page.locator("#state")).to_have_text("done", timeout=120_000)
        page.goto(web_url + "/account")
        assert page.inner_text("#credits") == "9" and page.inner_text("#used") == "1"
        assert job_id[:8] in page.inner_text("#history")
        page.screenshot(path=str(ARTIFACTS / "account.png"), full_page=True,
                        timeout=SHOT_TIMEOUT_MS)

        # export everything
        with page.expect_download() as info:
            page.click("#export")
        exported = tmp_path / "export.json"
        info.value.save_as(exported)
        data = json.loads(exported.read_text())
        assert data["account"]["email"] == "browser.user@example.org"
        assert [j["id"] for j in data["jobs"]] == [job_id]
        assert [p["stripe_reference"] for p in data["payments"]] == [checkout.answer[1]["id"]]

        # erase the account
        page.fill("#erase-password", PASSWORD)
        page.click("#erase")
        page.wait_for_selector("#erased")
        assert "keep 1 payment reference" in page.inner_text("#kept")
        page.goto(web_url + "/account")
        assert page.url.startswith(web_url + "/login")
        browser.close()
    assert errors == []
    foreign = [url for url in requested
               if urlsplit(url).scheme in ("http", "https", "ws", "wss")
               and urlsplit(url).netloc != origin.netloc]
    assert foreign == [] and len(requested) > 20
