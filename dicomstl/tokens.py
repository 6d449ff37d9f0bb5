"""Signed, expiring tokens for links in e-mails (itsdangerous, keyed by the secret key).

A purpose is part of the signature, so a token made for one use (confirming an address)
is worthless for another (resetting a password). Nothing is stored: a reset token is made
single-use by carrying a fingerprint of the password hash it may replace, so it stops
working once the password has changed.
"""

from __future__ import annotations

import hashlib

from itsdangerous import BadSignature, URLSafeTimedSerializer

#: purpose -> how long its tokens are valid, seconds
MAX_AGE_S = {"confirm": 2 * 86400, "reset": 3600}


class BadToken(Exception):
    """The token is forged, damaged, for another purpose, or expired."""


def make(secret_key: str, purpose: str, payload: dict) -> str:
    """A URL-safe token carrying ``payload`` (small: ids and fingerprints) for ``purpose``."""
    if purpose not in MAX_AGE_S:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(secret_key, salt=f"dicomstl-{purpose}").dumps(payload)


def read(secret_key: str, purpose: str, token: str) -> dict:
    """The payload of a valid token for ``purpose``; BadToken otherwise."""
    serializer = URLSafeTimedSerializer(secret_key, salt=f"dicomstl-{purpose}")
    try:
        payload = serializer.loads(token, max_age=MAX_AGE_S[purpose])
    except BadSignature:  # SignatureExpired is one
        raise BadToken(purpose) from None
    if not isinstance(payload, dict):
        raise BadToken(purpose)
    return payload


def fingerprint(value: str) -> str:
    """A short digest of a secret value (a password hash) to bind a token to it."""
    return hashlib.sha256(value.encode()).hexdigest()[:20]
