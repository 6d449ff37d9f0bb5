"""API keys and callback signatures."""

from __future__ import annotations

from dicomstl import apikeys
from dicomstl.db import migrate


def test_signatures_verify_only_the_signed_body():
    body = b'{"event": "job.ended"}'
    header = apikeys.sign("whsec_abc", body, 1700000000)
    assert header.startswith("t=1700000000,v1=")
    assert apikeys.verify("whsec_abc", body, header)
    assert not apikeys.verify("whsec_abc", body + b" ", header)
    assert not apikeys.verify("whsec_other", body, header)
    assert not apikeys.verify("whsec_abc", body, "garbage")


def test_keys_authenticate_until_revoked(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    migrate(url)
    key = apikeys.create_key(url, "Clinic A")
    assert key.key.startswith("dsk_") and len(key.key) > 40
    assert apikeys.authenticate(url, key.key).id == key.id
    assert apikeys.authenticate(url, key.key[:-1] + "x") is None
    assert apikeys.authenticate(url, "Bearer nonsense") is None
    assert apikeys.revoke_key(url, key.key.split("_")[1])
    assert apikeys.authenticate(url, key.key) is None
    assert not apikeys.revoke_key(url, "nosuchprefix")
