"""The operator's commands for accounts, run as a shell would: keys for an account or for
the operator, and credits granted on a server without payments."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dicomstl import apikeys, credits
from tests.service.accounts_helpers import make_account

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _dicomstl(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomstl_cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_credits_grant_and_show(service_env, settings):
    person = make_account(settings, "ops@example.org")
    done = _dicomstl(service_env, "credits", "grant", "OPS@example.org", "25")
    assert done.returncode == 0 and "balance: 25 credit(s)" in done.stdout
    assert credits.balance(settings.database_url, person.org_id) == 25
    shown = _dicomstl(service_env, "credits", "show", "ops@example.org")
    assert "+25  grant" in shown.stdout
    unknown = _dicomstl(service_env, "credits", "grant", "nobody@example.org", "5")
    assert unknown.returncode == 2 and "no account has the address" in unknown.stderr
    assert _dicomstl(service_env, "credits", "grant", "ops@example.org", "0").returncode == 2


def test_apikey_create_for_an_account_or_the_operator(service_env, settings):
    person = make_account(settings, "lab@example.org")
    made = _dicomstl(service_env, "apikey", "create", "--name", "Lab", "--account",
                     person.email)
    assert made.returncode == 0
    key = next(w for w in made.stdout.split() if w.startswith("dsk_"))
    assert apikeys.authenticate(settings.database_url, key).org_id == person.org_id
    operator = _dicomstl(service_env, "apikey", "create", "--name", "Ops")
    op_key = next(w for w in operator.stdout.split() if w.startswith("dsk_"))
    assert apikeys.authenticate(settings.database_url, op_key).org_id is None
    listing = _dicomstl(service_env, "apikey", "list").stdout
    assert f"organisation {person.org_id}" in listing and "operator" in listing
    assert key not in listing and op_key not in listing
