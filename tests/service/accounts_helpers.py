"""Helpers for the account tests: accounts made through the ground floor, browsers logged in
through the real login form, CSRF tokens read off pages, and the mail folder."""

from __future__ import annotations

import email
import email.policy
import re
import time
from dataclasses import dataclass
from pathlib import Path

from dicomstl import accounts, credits, organisations
from dicomstl.db import session_scope
from dicomstl.settings import Settings

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_LINK = re.compile(r"https?://\S+")


@dataclass
class Person:
    """An account made for a test: its address, password, ids."""

    email: str
    password: str
    user_id: int
    org_id: int


def make_account(settings: Settings, email_address: str, credits_: int = 0,
                 confirmed: bool = True, password: str = PASSWORD) -> Person:
    """A registered (and, unless told otherwise, confirmed) account with ``credits_``."""
    url = settings.database_url
    user, created = accounts.register(url, email_address, password)
    assert created
    if confirmed:
        accounts.confirm_email(url, user.id, user.email)
    org = organisations.place_of(url, user.id).org
    if credits_:
        with session_scope(url) as session:
            credits.grant(session, org.id, credits_, "grant")
    return Person(user.email, password, user.id, org.id)


def csrf(client, path: str = "/") -> str:
    """The CSRF token of this client's session, read off a page."""
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def log_in(client, person: Person, password: str | None = None):
    """Log ``client`` in through the login form; the response."""
    return client.post("/login", data={"csrf_token": csrf(client, "/login"),
                                       "email": person.email,
                                       "password": password or person.password})


def mails(settings: Settings, to: str | None = None, wait_s: float = 5.0,
          count: int = 1) -> list[email.message.EmailMessage]:
    """The messages in the mail folder (to ``to``), oldest first; waits up to ``wait_s`` for
    at least ``count`` (mail is written by a background thread)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in sorted(Path(settings.mail_dir).glob("*.eml")) if settings.mail_dir.is_dir() \
                else []:
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if to is None or to in str(msg["To"]):
                found.append(msg)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def link_in(msg: email.message.EmailMessage, path_part: str) -> str:
    """The path (and query) of the first link in a message that contains ``path_part``."""
    for url in _LINK.findall(msg.get_content()):
        if path_part in url:
            return "/" + url.split("/", 3)[3]
    raise AssertionError(f"no link with {path_part} in {msg['Subject']!r}")
