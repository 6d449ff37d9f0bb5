"""Accounts: registration, e-mail confirmation, login with lockout, passwords.

Passwords are hashed with argon2id (argon2-cffi's defaults, re-hashed at login when they
change). A login takes the same time and gives the same answer whether the address is
unknown, the password wrong or the account locked: one argon2 verification every time.
After ``login_lockout_after`` failures in a row an account is locked for
``login_lockout_s`` (the caller mails a notice). Each account gets its own organisation
(``dicomstl.organisations``), which holds its credits, keys and jobs.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from dicomstl.db import Membership, Organisation, User, session_scope, utcnow
from dicomstl.settings import Settings

PASSWORD_MIN, PASSWORD_MAX = 10, 1000
_hasher = PasswordHasher()
#: argon2id's default takes 64 MiB a hash: at most this many at once in a process (the rest
#: wait their turn), so a burst of logins cannot take a web process's memory.
_HASHING = threading.BoundedSemaphore(2)


class AccountError(Exception):
    """Something a user can correct (the message says what)."""


@dataclass(frozen=True)
class LoginResult:
    """What a login attempt came to. ``user`` is set only when it succeeded;
    ``unconfirmed`` when the password was right but the address is not confirmed yet;
    ``locked_now`` when this failure locked the account (send the notice)."""

    user: User | None
    unconfirmed: bool = False
    locked_now: User | None = None


def normalise_email(text: str) -> str:
    """The address in its normal form (lower case, the domain in ASCII); AccountError when it
    is not an e-mail address. Deliverability is proved by the confirmation link instead of
    a DNS lookup."""
    try:
        valid = validate_email(text.strip(), check_deliverability=False)
    except EmailNotValidError:
        raise AccountError("that is not an e-mail address") from None
    return valid.ascii_email.lower() if valid.ascii_email else valid.normalized.lower()


def check_password(password: str, email: str = "") -> None:
    """AccountError unless ``password`` is acceptable: 10 to 1000 characters, not the
    address."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AccountError(f"the password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if email and password.strip().lower() == email.lower():
        raise AccountError("the password must not be the e-mail address")


def hash_password(password: str) -> str:
    with _HASHING:
        return _hasher.hash(password)


@cache
def _dummy_hash() -> str:
    """Verified against when the address is unknown, so that answer takes as long as any
    other (made at the first login, not at import: a hash takes 64 MiB for a moment)."""
    return hash_password(secrets.token_urlsafe(16))


def _verify(password_hash: str, password: str) -> bool:
    try:
        with _HASHING:
            return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def register(url: str, email: str, password: str) -> tuple[User, bool]:
    """Make an unconfirmed account with its own organisation; (user, created). An address
    that has an account already returns that account untouched (created False): the caller
    answers both alike, so registration tells no one which addresses have accounts."""
    email = normalise_email(email)
    check_password(password, email)
    existing = find_user(url, email)
    if existing is not None:
        hash_password(password)  # as long as a registration that makes an account
        return existing, False
    now = utcnow()
    try:
        with session_scope(url) as session:
            user = User(email=email, password_hash=hash_password(password),
                        session_token=secrets.token_hex(16), created_at=now,
                        failed_logins=0)
            org = Organisation(created_at=now)
            session.add_all([user, org])
            session.flush()
            session.add(Membership(user_id=user.id, org_id=org.id, role="owner",
                                   created_at=now))
    except IntegrityError:  # the same address registered at the same moment
        existing = find_user(url, email)
        if existing is None:
            raise
        return existing, False
    return user, True


def find_user(url: str, email: str) -> User | None:
    with session_scope(url) as session:
        return session.scalar(select(User).where(User.email == email.strip().lower()))


def get_user(url: str, user_id: int) -> User | None:
    with session_scope(url) as session:
        return session.get(User, user_id)


def confirm_email(url: str, user_id: int, email: str) -> bool:
    """Mark the address confirmed, if the account still has that address; True if it is."""
    with session_scope(url) as session:
        user = session.get(User, user_id)
        if user is None or user.email != email:
            return False
        user.confirmed_at = user.confirmed_at or utcnow()
        return True


def log_in(settings: Settings, email: str, password: str,
           now: dt.datetime | None = None) -> LoginResult:
    """Check an address and password (one argon2 verification, whatever happens)."""
    now = now or utcnow()
    url = settings.database_url
    try:
        email = normalise_email(email)
    except AccountError:
        email = ""
    user = find_user(url, email) if email else None
    ok = _verify(user.password_hash if user else _dummy_hash(), password)
    if user is None:
        return LoginResult(None)
    if user.locked_until is not None and user.locked_until > now:
        return LoginResult(None)
    if not ok:
        return LoginResult(None, locked_now=_count_failure(settings, user.id, now))
    if user.confirmed_at is None:
        return LoginResult(None, unconfirmed=True)
    with session_scope(url) as session:
        row = session.get(User, user.id)
        row.failed_logins, row.locked_until, row.last_login_at = 0, None, now
        if _hasher.check_needs_rehash(row.password_hash):
            row.password_hash = hash_password(password)
        session.flush()
        return LoginResult(row)


def _count_failure(settings: Settings, user_id: int, now: dt.datetime) -> User | None:
    """One more failure in a row (a single UPDATE, so concurrent attempts all count); locks
    the account at the limit. The user when this failure locked it."""
    with session_scope(settings.database_url) as session:
        session.execute(update(User).where(User.id == user_id).values(
            failed_logins=User.failed_logins + 1))
        user = session.get(User, user_id)  # read after the UPDATE: the count it left
        if user.failed_logins < settings.login_lockout_after:
            return None
        user.failed_logins = 0
        user.locked_until = now + dt.timedelta(seconds=settings.login_lockout_s)
        return user


def set_password(url: str, user_id: int, password: str) -> User:
    """A new password; every session of the account ends (a new session token) and a lock
    is lifted."""
    with session_scope(url) as session:
        user = session.get(User, user_id)
        check_password(password, user.email)
        user.password_hash = hash_password(password)
        user.session_token = secrets.token_hex(16)
        user.failed_logins, user.locked_until = 0, None
        return user


def check_current_password(url: str, user_id: int, password: str) -> bool:
    """Whether ``password`` is the account's (to confirm a grave action such as erasure)."""
    user = get_user(url, user_id)
    return user is not None and _verify(user.password_hash, password)


def session_identity(user: User) -> str:
    """What a login session stores to name its account: the id and the session token, so
    a new token (``set_password``) ends every session."""
    return f"{user.id}:{user.session_token}"


def user_for_session(url: str, identity: str) -> User | None:
    """The account a session names, if that session is still valid."""
    user_id, _, token = identity.partition(":")
    if not user_id.isdigit() or not token:
        return None
    user = get_user(url, int(user_id))
    if user is None or not secrets.compare_digest(user.session_token, token):
        return None
    return user

