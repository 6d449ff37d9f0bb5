"""E-mail to account holders: confirmation and reset links, invitations, lockout notices.

With ``DICOMSTL_SMTP_URL`` each message goes out through that server (``smtp://`` with
STARTTLS, ``smtps://`` over TLS, ``smtp://…?starttls=0`` in the clear on a trusted network);
without it each is written to ``<data dir>/mail/`` as an ``.eml`` file (owner-only), so a
service on one machine works offline. The log names the subject and the file, never the
address or the message's text (links in it carry tokens). The scheduler deletes those files
after ``mail_keep_s``.
"""

from __future__ import annotations

import logging
import os
import secrets
import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from dicomstl.db import utcnow
from dicomstl.errors import ConfigError
from dicomstl.settings import Settings
from dicomstl.storage import PRIVATE_FILE, make_private_dir

log = logging.getLogger(__name__)
SMTP_TIMEOUT_S = 20


def message(settings: Settings, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text message from ``mail_from``."""
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain="dicomstl")
    msg.set_content(body, cte="8bit")  # links stay whole (no quoted-printable breaks)
    return msg


def send(settings: Settings, to: str, subject: str, body: str) -> None:
    """Send (or, without SMTP, write) one message; OSError or smtplib's errors on failure."""
    msg = message(settings, to, subject, body)
    if not settings.smtp_url:
        path = write(settings, msg)
        log.info("mail %r written to %s (no SMTP server is set)", subject, path)
        return
    _smtp(settings.smtp_url, msg)
    log.info("mail %r sent", subject)


def send_later(settings: Settings, to: str, subject: str, body: str) -> threading.Thread:
    """Send in a background thread, so an answer takes as long whether or not it sends mail
    (and however slow the mail server is); failures are logged."""

    def run() -> None:
        try:
            send(settings, to, subject, body)
        except (OSError, smtplib.SMTPException):
            log.warning("mail %r could not be sent", subject, exc_info=True)

    thread = threading.Thread(target=run, name="mail", daemon=True)
    thread.start()
    return thread


def write(settings: Settings, msg: EmailMessage) -> Path:
    """Write a message into the mail folder (owner-only); its path."""
    folder = make_private_dir(settings.mail_dir)
    path = folder / f"{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(bytes(msg))
    return path


def _smtp(url: str, msg: EmailMessage) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("DICOMSTL_SMTP_URL must read smtp://[user:password@]host[:port] or "
                          "smtps://…")
    query = parse_qs(parts.query)
    context = ssl.create_default_context()
    if parts.scheme == "smtps":
        server: smtplib.SMTP = smtplib.SMTP_SSL(parts.hostname, parts.port or 465,
                                                timeout=SMTP_TIMEOUT_S, context=context)
    else:
        server = smtplib.SMTP(parts.hostname, parts.port or 587, timeout=SMTP_TIMEOUT_S)
    with server:
        if parts.scheme == "smtp" and query.get("starttls", ["1"])[0] != "0":
            server.starttls(context=context)
        if parts.username:
            server.login(unquote(parts.username), unquote(parts.password or ""))
        server.send_message(msg)
