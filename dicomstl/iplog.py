"""The IP log: one row per upload, API call and login attempt, for abuse review and rate
limits. It holds the client's address, the time and the route's pattern (never a URL with
ids in it); the scheduler deletes rows after 30 days (``dicomstl.retention_policy``)."""

from __future__ import annotations

import datetime as dt

from dicomstl.db import IpLogEntry, session_scope, utcnow

KINDS = ("upload", "api", "login")


def record(database_url: str, ip: str, kind: str, route: str,
           now: dt.datetime | None = None) -> None:
    """Add one row; ``kind`` is one of ``KINDS``."""
    if kind not in KINDS:
        raise ValueError(f"unknown IP log kind {kind!r}")
    with session_scope(database_url) as session:
        session.add(IpLogEntry(ip=(ip or "unknown")[:45], kind=kind, route=route[:200],
                               created_at=now or utcnow()))
