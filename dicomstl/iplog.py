"""The IP log: one row per upload, API call, login attempt and account action, for abuse
review. It holds the client's address, the time, the route's pattern (never a URL with ids
in it) and the account where known; the scheduler deletes rows after 30 days
(``dicomstl.retention_policy``), an erasure at once."""

from __future__ import annotations

import datetime as dt

from dicomstl.db import IpLogEntry, session_scope, utcnow

#: upload, API call, login attempt, other account actions (registration, password reset,
#: contact form, erasure).
KINDS = ("upload", "api", "login", "account")


def record(database_url: str, ip: str, kind: str, route: str,
           now: dt.datetime | None = None, account_id: int | None = None) -> None:
    """Add one row; ``kind`` is one of ``KINDS``; ``account_id`` the user, where known."""
    if kind not in KINDS:
        raise ValueError(f"unknown IP log kind {kind!r}")
    with session_scope(database_url) as session:
        session.add(IpLogEntry(ip=(ip or "unknown")[:45], kind=kind, route=route[:200],
                               created_at=now or utcnow(), account_id=account_id))
