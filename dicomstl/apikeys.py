"""API keys for clinics: made once, shown once, kept only as a SHA-256 hash.

A key reads ``dsk_<prefix>_<secret>``: the prefix names the key in listings and logs, the
secret (256 random bits) is what proves it. Keys are random, so an unsalted hash is enough.
A key belongs to an organisation (made on the account page, or with ``dicomstl apikey
create --account``): its jobs are the organisation's and cost its credits. A key made on the
command line without an account is the operator's: its jobs are its own and cost nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from dicomstl.credits import owner_of_org
from dicomstl.db import ApiKey, session_scope, utcnow


@dataclass(frozen=True)
class NewKey:
    id: int
    name: str
    key: str  # shown once, never stored
    webhook_secret: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(database_url: str, name: str, org_id: int | None = None,
               created_by: int | None = None) -> NewKey:
    """Make a key (for organisation ``org_id``, or an operator's key); the returned ``key``
    cannot be recovered later."""
    prefix = secrets.token_hex(4)
    key = f"dsk_{prefix}_{secrets.token_urlsafe(32)}"
    webhook_secret = "whsec_" + secrets.token_urlsafe(32)
    with session_scope(database_url) as session:
        row = ApiKey(name=name[:200], prefix=prefix, key_hash=_hash(key),
                     webhook_secret=webhook_secret, created_at=utcnow(), org_id=org_id,
                     created_by=created_by)
        session.add(row)
        session.flush()
        return NewKey(row.id, name, key, webhook_secret)


def authenticate(database_url: str, key: str) -> ApiKey | None:
    """The live key row for a presented key, or None."""
    if not key.startswith("dsk_") or len(key) > 200:
        return None
    digest = _hash(key)
    with session_scope(database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            row.last_used_at = now  # at most one write a minute per key
        return row


def list_keys(database_url: str, org_id: int | None = None) -> list[ApiKey]:
    """Every key (the operator's view), or an organisation's."""
    query = select(ApiKey).order_by(ApiKey.id)
    if org_id is not None:
        query = query.where(ApiKey.org_id == org_id)
    with session_scope(database_url) as session:
        return list(session.scalars(query))


def revoke_key(database_url: str, prefix: str, org_id: int | None = None) -> bool:
    """Revoke the key with this prefix (only among ``org_id``'s keys when given); False when
    there is none."""
    query = select(ApiKey).where(ApiKey.prefix == prefix)
    if org_id is not None:
        query = query.where(ApiKey.org_id == org_id)
    with session_scope(database_url) as session:
        row = session.scalar(query)
        if row is None:
            return False
        row.revoked_at = row.revoked_at or utcnow()
        return True


def owner_of(key: ApiKey) -> str:
    """Who owns the jobs a key submits: its organisation, or the key itself."""
    return owner_of_org(key.org_id) if key.org_id is not None else f"key:{key.id}"


def rate_limit_id(key: ApiKey) -> str:
    """What names a key in the rate limiter's Redis counters: part of its hash, never the key
    or its prefix (an erasure finds and deletes them by it)."""
    return "key-" + key.key_hash[:24]


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Dicomstl-Signature`` header value for a callback body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether a callback's signature header matches its body (for clients and tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        expected = sign(secret, body, int(parts["t"]))
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(expected, header)
