"""Who is asking: a logged-in account (Flask-Login), an anonymous visitor, or an API key;
and which job owner each stands for.

A login session names its account by id and session token (``accounts.session_identity``),
so a password change ends every session. Logging in replaces the whole session (a new
cookie, a new CSRF token: nothing of the anonymous session is carried over but its jobs,
which the account's organisation claims). Anonymous jobs belong to a random token in the
session cookie, kept in the database only as a hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from flask import Flask, current_app, g, request, session
from flask_login import AnonymousUserMixin, LoginManager, current_user, login_user, logout_user

from dicomstl import accounts, apikeys, jobs
from dicomstl.credits import owner_of_org
from dicomstl.db import ApiKey, Organisation, User
from dicomstl.organisations import place_of
from dicomstl.settings import Settings


@dataclass
class Account:
    """The logged-in account of this request: the user, their organisation and role."""

    user: User
    org: Organisation
    role: str
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return accounts.session_identity(self.user)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def owner(self) -> bool:
        return self.role == "owner"

    @property
    def jobs_owner(self) -> str:
        """The owner of the jobs this account sees and makes: its organisation."""
        return owner_of_org(self.org.id)


class Anonymous(AnonymousUserMixin):
    user = org = None
    jobs_owner = None


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def install(app: Flask) -> None:
    manager = LoginManager(app)
    manager.login_view = "accounts.login"
    manager.login_message = "Log in to see that page."
    manager.anonymous_user = Anonymous

    @manager.user_loader
    def load(identity: str) -> Account | None:
        user = accounts.user_for_session(_settings().database_url, identity)
        if user is None:
            return None
        try:
            place = place_of(_settings().database_url, user.id)
        except LookupError:
            return None
        g.account_id = user.id  # the IP log's account
        return Account(user, place.org, place.role)


def account() -> Account | None:
    """The logged-in account, or None."""
    return current_user._get_current_object() if current_user.is_authenticated else None


def _anonymous_owner(token: str) -> str:
    return "web:" + hashlib.sha256(token.encode()).hexdigest()[:40]


def browser_owner(create: bool = False) -> str | None:
    """The job owner this browser stands for: the account's organisation, or the anonymous
    session's token (made when ``create``); None for a new anonymous visitor."""
    if current_user.is_authenticated:
        return current_user.jobs_owner
    token = session.get("owner")
    if token is None:
        if not create:
            return None
        token = session["owner"] = secrets.token_urlsafe(32)
        session.permanent = True
    return _anonymous_owner(token)


def begin(user: User) -> int:
    """Log ``user`` in, in a new session; the account's organisation claims the jobs this
    browser made anonymously. How many jobs it claimed."""
    token = session.get("owner")
    session.clear()
    place = place_of(_settings().database_url, user.id)
    login_user(Account(user, place.org, place.role))
    session.permanent = True
    g.account_id = user.id  # the IP log's row of this login names the account
    if token is None:
        return 0
    return jobs.claim_jobs(_settings(), _anonymous_owner(token), owner_of_org(place.org.id))


def end() -> None:
    """Log out: the session is emptied (a new anonymous one starts)."""
    logout_user()
    session.clear()


def request_key() -> ApiKey | None:
    """The live API key this request presents (``Authorization: Bearer <key>``), looked up
    once per request; None without one, or for an unknown or revoked key."""
    if "api_key" not in g:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        g.api_key = apikeys.authenticate(_settings().database_url, key.strip()) \
            if scheme.lower() == "bearer" else None
        if g.api_key is not None:
            g.account_id = g.api_key.created_by  # the IP log's account
    return g.api_key
