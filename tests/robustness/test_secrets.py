"""No secret in the repository, none in the logs.

- detect-secrets scans every git-tracked file; anything it finds fails the test unless it is
  a reviewed false positive recorded in ``.secrets.baseline``. The scan is proved to bite: a
  fake AWS key and a private key block planted in a temporary copy of a tracked file are
  found, and the baseline does not excuse them.
- After an end-to-end flow with real processes (gunicorn, a worker, the scheduler, the Stripe
  stand-in): register, confirm, reset the password with the mailed token, log in (a session
  cookie), buy the clinic plan (Stripe's webhooks signed with the webhook secret), create an
  API key and convert a series with it, no log file of the web app, the worker or the
  scheduler holds any of those secrets: the webhook secret, the Stripe key, the app's secret
  key, the API key and its callback-signing secret, the confirmation and reset tokens, the
  session cookie, the passwords.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests

from tests.service.accounts_helpers import link_in, mails
from tests.service.helpers import auth, spawn, stop, wait_for
from tests.service.stripe_standin import SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / ".secrets.baseline"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def tracked_files() -> list[str]:
    """The repository's git-tracked files that exist in the work tree, but the baseline (its
    hashes of the reviewed findings read as secrets themselves)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return [name for name in out.split("\0") if name and name != BASELINE.name
            and (ROOT / name).is_file()]


def scan(files: list[str], root: Path) -> tuple[set, set]:
    """detect-secrets over ``files`` (relative to ``root``) with the baseline's plugins and
    filters; (everything found, what the baseline does not excuse) as (file, type, line).
    A finding is excused by a baseline entry of the same file, type and secret (its hash)."""
    import os

    from detect_secrets import SecretsCollection
    from detect_secrets.core import baseline
    from detect_secrets.settings import transient_settings

    saved = baseline.load_from_file(str(BASELINE))
    with transient_settings({"plugins_used": saved["plugins_used"],
                             "filters_used": saved["filters_used"]}):
        reviewed = baseline.load(saved, str(BASELINE))
        found = SecretsCollection(root=str(root))
        found.scan_files(*files, num_processors=os.cpu_count() or 2)
    excused = {(os.path.normpath(s.filename), s.type, s.secret_hash) for _n, s in reviewed}
    rows = {(os.path.relpath(os.path.join(root, s.filename), root), s.type, s.line_number,
             s.secret_hash) for _n, s in found}
    new = {row[:3] for row in rows if (row[0], row[1], row[3]) not in excused}
    return {row[:3] for row in rows}, new


def test_no_secret_in_the_repository():
    files = tracked_files()
    assert len(files) > 100
    found, new = scan(files, ROOT)
    assert found  # the reviewed false positives are still found: the scan ran
    assert new == set(), "secrets in tracked files (review them; real ones must go):\n" + \
        "\n".join(f"{f}:{line} {kind}" for f, kind, line in sorted(new))


def test_a_planted_secret_is_found(tmp_path):
    """An AWS access key and a private key block in a copy of a tracked file are found and
    not excused by the baseline (the names are built here, so this file holds none)."""
    name = "dicomstl/settings.py"
    (tmp_path / "dicomstl").mkdir()
    planted = tmp_path / name
    shutil.copy(ROOT / name, planted)
    aws = "AKIA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    block = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA" + "q" * 60 + "\n"
    with planted.open("a") as fh:
        fh.write(f'\nAWS_ACCESS_KEY_ID = "{aws}"\nKEY = """{block}"""\n')
    _found, new = scan([name], tmp_path)
    assert {kind for _f, kind, _line in new} >= {"AWS Access Key", "Private Key"}, new


# The logs after an end-to-end flow ------------------------------------------------------------


@pytest.fixture
def service_env(service_env, stripe_standin):
    """The service with payments on against the Stripe stand-in, and a webhook secret made
    for this test."""
    stripe_standin.webhook_secret = "whsec_" + secrets.token_urlsafe(24)
    return {**service_env, "DICOMSTL_STRIPE_SECRET_KEY": SECRET_KEY,
            "DICOMSTL_STRIPE_WEBHOOK_SECRET": stripe_standin.webhook_secret,
            "DICOMSTL_STRIPE_API_BASE": stripe_standin.url,
            "DICOMSTL_CREDIT_PACKS": "10:price_pack10:19 EUR",
            "DICOMSTL_CLINIC_PRICE_ID": "price_clinic", "DICOMSTL_LOG_LEVEL": "DEBUG"}


def _form(browser: requests.Session, url: str, path: str, data: dict,
          page: str | None = None) -> requests.Response:
    token = _CSRF.search(browser.get(url + (page or path)).text).group(1)
    return browser.post(url + path, data={"csrf_token": token, **data},
                        allow_redirects=False, timeout=30)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_secret_reaches_the_logs(web_url, worker, service_env, settings, stripe_standin, series,
                                    tmp_path):
    scheduler = spawn(["scheduler"], service_env, tmp_path / "scheduler.log")
    worker()
    try:
        stripe_standin.webhook_url = web_url + "/billing/webhook"
        address, first = "clinic@example.org", "the first long password"
        second = "a second long password"
        browser = requests.Session()
        # register and confirm
        r = _form(browser, web_url, "/register", {"email": address, "password": first,
                                                  "repeat": first})
        assert r.status_code == 200, r.text
        confirm = link_in(mails(settings, address)[0], "/confirm/")
        assert browser.get(web_url + confirm, timeout=30).ok
        # a password reset with its token
        assert _form(browser, web_url, "/reset", {"email": address}).status_code == 200
        (reset_mail,) = [m for m in mails(settings, address, count=2)
                         if "/reset/" in m.get_content()]
        reset = link_in(reset_mail, "/reset/")
        r = _form(browser, web_url, reset, {"password": second, "repeat": second})
        assert r.status_code in (200, 303), r.text
        # log in: a session cookie
        r = _form(browser, web_url, "/login", {"email": address, "password": second})
        assert r.status_code == 303, r.text
        cookie = browser.cookies.get("session")
        assert cookie
        # the clinic plan: Stripe's signed webhooks complete it
        r = _form(browser, web_url, "/billing/checkout", {"product": "clinic"}, "/pricing")
        assert r.status_code == 303, r.text
        deliveries = stripe_standin.wait_for_deliveries(3, timeout_s=30)
        assert [d.status for d in deliveries] == [200, 200, 200]
        # an API key, and a conversion with it
        r = _form(browser, web_url, "/account/keys", {"name": "PACS"}, "/account")
        assert r.status_code == 201, r.text
        key = re.search(r'id="new-key">([^<]+)<', r.text).group(1)
        hook = re.search(r'id="new-webhook-secret">([^<]+)<', r.text).group(1)
        files = [("files", (p.name, p.read_bytes())) for p in series]
        r = requests.post(web_url + "/api/v1/jobs", files=files, headers=auth(key), timeout=60)
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        state = wait_for(lambda: (s := requests.get(
            f"{web_url}/api/v1/jobs/{job}", headers=auth(key), timeout=10).json()["state"])
            in ("done", "failed") and s, 120, "the conversion")
        assert state == "done"
        assert requests.get(f"{web_url}/api/v1/jobs/{job}/result", headers=auth(key),
                            timeout=30).status_code == 200
    finally:
        stop(scheduler)
    tokens = [confirm.rsplit("/", 1)[1], reset.rsplit("/", 1)[1]]
    wanted = {"webhook secret": stripe_standin.webhook_secret, "Stripe key": SECRET_KEY,
              "app secret key": service_env["DICOMSTL_SECRET_KEY"], "API key": key,
              "API key's secret part": key.split("_", 2)[2], "callback secret": hook,
              "confirmation token": tokens[0], "reset token": tokens[1],
              "session cookie": cookie,
              "session cookie payload": max(cookie.split("."), key=len),
              "first password": first, "second password": second}
    wanted.update({f"{name} (url-decoded)": unquote(value) for name, value in wanted.items()})
    logs = sorted(tmp_path.glob("*.log"))
    assert {p.name for p in logs} >= {"web.log", "worker.log", "scheduler.log"}
    text = {p.name: p.read_text(errors="replace") for p in logs}
    assert all(text.values()) and "Stripe event invoice.paid applied" in text["web.log"]
    leaks = [f"{what} in {name}" for what, value in wanted.items() for name, body in text.items()
             if value in body]
    assert leaks == []
