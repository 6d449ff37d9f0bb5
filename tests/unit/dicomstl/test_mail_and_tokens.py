"""E-mail through a real SMTP server (aiosmtpd on loopback) or the mail folder, and the signed
tokens the links carry."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import time
from dataclasses import replace

import pytest

from dicomstl import mail, tokens
from dicomstl.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "var"),
                          "DICOMSTL_SECRET_KEY": "test-secret"})


def test_without_smtp_a_message_is_written_owner_only_and_the_log_keeps_no_link(
        settings, caplog):
    with caplog.at_level(logging.INFO):
        mail.send(settings, "ann@example.org", "Confirm", "open https://x.example/c/SECRET1")
    (path,) = settings.mail_dir.glob("*.eml")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(settings.mail_dir.stat().st_mode & 0o777) == "0o700"
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["To"] == "ann@example.org" and msg["From"] == settings.mail_from
    assert "https://x.example/c/SECRET1" in path.read_text()  # whole, not quoted-printable
    assert "SECRET1" not in caplog.text and "ann@example.org" not in caplog.text
    assert "Confirm" in caplog.text


def test_with_smtp_the_message_goes_to_the_server(settings):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received = []

    class Keep(Message):
        def handle_message(self, message):
            received.append(message)

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Controller(Keep(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        smtp = replace(settings, smtp_url=f"smtp://127.0.0.1:{port}?starttls=0",
                       mail_from="dicomstl <no-reply@dicomstl.example>")
        mail.send(smtp, "bo@example.org", "Reset", "a link: https://x.example/r/T")
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    (msg,) = received
    assert msg["To"] == "bo@example.org" and msg["Subject"] == "Reset"
    assert "https://x.example/r/T" in msg.get_payload()
    assert not settings.mail_dir.exists()  # nothing written locally


def test_tokens_carry_their_purpose_and_expire(monkeypatch):
    made = tokens.make("k", "confirm", {"u": 1})
    assert tokens.read("k", "confirm", made) == {"u": 1}
    for key, purpose, token in (("other key", "confirm", made), ("k", "reset", made),
                                ("k", "confirm", made[:-2] + "xx")):
        with pytest.raises(tokens.BadToken):
            tokens.read(key, purpose, token)
    from itsdangerous.timed import TimestampSigner

    monkeypatch.setattr(TimestampSigner, "get_timestamp",
                        lambda self: int(time.time()) - 2 * 86400 - 1)
    old = tokens.make("k", "confirm", {"u": 1})
    monkeypatch.undo()
    with pytest.raises(tokens.BadToken):
        tokens.read("k", "confirm", old)
    with pytest.raises(ValueError):
        tokens.make("k", "unknown purpose", {})
