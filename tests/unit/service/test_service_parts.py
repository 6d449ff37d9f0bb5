"""The service's pure parts: settings, job options, API keys and signatures, the schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicomstl import apikeys, storage
from dicomstl.db import Base, engine_for, migrate
from dicomstl.errors import ConfigError
from dicomstl.options import OptionsError, form_options, parse_options
from dicomstl.settings import load_settings


def test_settings_defaults_and_environment(tmp_path):
    s = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d")})
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'dicomstl.db'}"
    assert s.redis_url is None and s.result_ttl_s == 3600 and s.upload_ttl_s == 3600
    assert s.jobs_dir.is_dir() and s.incoming_dir.is_dir()
    # The secret key is made once and shared by every process using the folder.
    assert load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d")}).secret_key == s.secret_key
    assert oct((tmp_path / "d" / "secret_key").stat().st_mode & 0o777) == "0o600"
    t = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d"), "DICOMSTL_PORT": "9000",
                       "DICOMSTL_HEARTBEAT_S": "2.5", "REDIS_URL": "redis://x:6379/1",
                       "DATABASE_URL": "postgresql://u@h/db"})
    assert (t.port, t.heartbeat_s, t.redis_url, t.database_url) == (
        9000, 2.5, "redis://x:6379/1", "postgresql://u@h/db")
    with pytest.raises(ConfigError, match="DICOMSTL_PORT must be a whole number"):
        load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d"), "DICOMSTL_PORT": "eighty"})


def test_options_are_checked_like_the_cli():
    assert parse_options({"preset": "bone", "smooth_mm": 1, "keep": "largest"}) == {
        "preset": "bone", "smooth_mm": 1, "keep": "largest"}
    assert parse_options({"level": None, "crop": ""}) == {}
    for bad, text in [({"level": True}, "must be a number"), ({"time_point": -1}, "negative"),
                      ({"max_triangles": 10}, "at least 100"), ({"format": "obj"}, "format"),
                      ({"level": float("nan")}, "number"), ({"series": "x" * 300}, "too long")]:
        with pytest.raises(OptionsError, match=text):
            parse_options(bad)
    assert form_options({"preset": "", "level": "250", "max_triangles": "5000"}) == {
        "level": 250.0, "max_triangles": 5000}
    with pytest.raises(OptionsError, match="max triangles must be a whole number"):
        form_options({"max_triangles": "many"})


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


def test_migrations_match_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    migrate(url)  # a second run is a no-op
    with engine_for(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_result_names_carry_no_user_text():
    assert storage.result_name("AbCdEfGhIjKlMnOp", "stl-ascii") == "dicomstl-AbCdEfGhIjKl.stl"
    assert storage.result_name("AbCdEfGhIjKlMnOp", "3mf") == "dicomstl-AbCdEfGhIjKl.3mf"


def test_boolean_and_list_settings(tmp_path):
    base = {"DICOMSTL_DATA_DIR": str(tmp_path / "d")}
    assert load_settings(base).callback_allow_http is False
    for text, value in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False)):
        s = load_settings({**base, "DICOMSTL_CALLBACK_ALLOW_HTTP": text})
        assert s.callback_allow_http is value
    with pytest.raises(ConfigError, match="DICOMSTL_CALLBACK_ALLOW_HTTP must be 1 or 0"):
        load_settings({**base, "DICOMSTL_CALLBACK_ALLOW_HTTP": "maybe"})
    s = load_settings({**base,
                       "DICOMSTL_CALLBACK_ALLOWED_HOSTS": " Hooks.Clinic.local., 10.0.0.7,"})
    assert s.callback_hosts == {"hooks.clinic.local", "10.0.0.7"}
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == "0o700"
