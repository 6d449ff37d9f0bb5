"""Settings from the environment: defaults, types, the shared secret key, owner-only folders."""

from __future__ import annotations

import pytest

from dicomstl.errors import ConfigError
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


def test_settings_read_without_preparing_touch_nothing(tmp_path):
    s = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d"), "DICOMSTL_PORT": "9000"},
                      prepare=False)
    assert s.port == 9000 and s.secret_key == "" and not (tmp_path / "d").exists()
    key = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "d"),
                         "DICOMSTL_SECRET_KEY": "k"}, prepare=False).secret_key
    assert key == "k" and not (tmp_path / "d").exists()


def test_printer_beds_and_densities(tmp_path):
    from dicomstl.settings import PrintTargets

    env = {"DICOMSTL_DATA_DIR": str(tmp_path)}
    assert load_settings(env).print_targets == PrintTargets()
    targets = load_settings({**env, "DICOMSTL_PRINTER_BEDS": "120x120x100, 300X300X400",
                             "DICOMSTL_RESIN_DENSITY": "1.2"}).print_targets
    assert targets.beds_mm == ((120, 120, 100), (300, 300, 400))
    assert targets.densities_g_cm3 == {"pla": 1.24, "resin": 1.2}
    for name, value in (("PRINTER_BEDS", "120x120"), ("PRINTER_BEDS", "axbxc"),
                        ("PRINTER_BEDS", "0x10x10"), ("PLA_DENSITY", "0")):
        with pytest.raises(ConfigError, match=f"DICOMSTL_{name}"):
            load_settings({**env, f"DICOMSTL_{name}": value})


def test_payment_mail_and_limit_settings(tmp_path):
    from dicomstl.settings import CreditPack

    env = {"DICOMSTL_DATA_DIR": str(tmp_path)}
    plain = load_settings(env)
    assert not plain.billing_enabled and plain.packs == () and plain.mail_dir == tmp_path / "mail"
    s = load_settings({**env, "DICOMSTL_STRIPE_SECRET_KEY": "sk_test_1",
                       "DICOMSTL_STRIPE_WEBHOOK_SECRET": "whsec_1",
                       "DICOMSTL_CREDIT_PACKS": "50:price_B:79 EUR, 10:price_A:19 EUR",
                       "DICOMSTL_CLINIC_PRICE_ID": "price_C",
                       "DICOMSTL_CLINIC_FORMER_PRICE_IDS": "price_old1, price_old2,",
                       "DICOMSTL_RATE_LOGIN": "3 per minute;20 per day",
                       "DICOMSTL_SMTP_URL": "smtps://user:p%40ss@mail.example:465",
                       "DICOMSTL_PUBLIC_URL": "https://dicomstl.example"})
    assert s.billing_enabled  # both Stripe secrets: one alone is not enough
    assert not load_settings({**env, "DICOMSTL_STRIPE_SECRET_KEY": "sk_test_1"}).billing_enabled
    assert s.packs == (CreditPack(10, "price_A", "19 EUR"), CreditPack(50, "price_B", "79 EUR"))
    assert s.clinic_price_ids == {"price_C", "price_old1", "price_old2"}
    for name, value in (("CREDIT_PACKS", "10:prod_A:19 EUR"), ("CREDIT_PACKS", "ten:price_A:1"),
                        ("CREDIT_PACKS", "10:price_A:1,10:price_B:2"),
                        ("CREDIT_PACKS", "10:price_A:"), ("RATE_API", "lots"),
                        ("RATE_UPLOAD", "5 per fortnight"), ("SMTP_URL", "mail.example:25"),
                        ("PUBLIC_URL", "dicomstl.example"),
                        ("PUBLIC_URL", "https://dicomstl.example/path"),
                        ("CREDIT_UPLOAD_BYTES", "0"), ("LOGIN_LOCKOUT_AFTER", "0")):
        with pytest.raises(ConfigError, match=f"DICOMSTL_{name}"):
            load_settings({**env, f"DICOMSTL_{name}": value})


def test_a_bad_smtp_url_is_refused_without_showing_its_password(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_settings({"DICOMSTL_DATA_DIR": str(tmp_path),
                       "DICOMSTL_SMTP_URL": "ftp://user:hunter2@mail.example"})
    assert "hunter2" not in str(refused.value)
