"""Organisations: who pays, and who shares credits, API keys and jobs (one level).

Every account belongs to exactly one organisation: its own from registration (a party of
one), or a clinic's it joined by invitation. An owner invites by e-mail (a random token, kept
only as its SHA-256, valid ``INVITATION_DAYS``) and removes members; a removed member gets an
organisation of their own again, empty. Joining brings one's own organisation along: its
credits, ledger, keys and jobs move into the clinic's and it is closed, unless it has other
members or a running plan (those are left or cancelled first).

Jobs of an organisation are owned by ``org:<id>`` (``credits.owner_of_org``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from dicomstl.accounts import normalise_email
from dicomstl.credits import owner_of_org
from dicomstl.db import (
    ApiKey,
    CreditEntry,
    Invitation,
    Job,
    Membership,
    Organisation,
    User,
    session_scope,
    utcnow,
)

INVITATION_DAYS = 7
MAX_MEMBERS = 200
ROLES = ("owner", "member")
#: Subscription states in which the clinic plan is in force.
PLAN_LIVE = ("active", "trialing", "past_due")


class MembershipError(Exception):
    """The change is not allowed (the message says why)."""


@dataclass(frozen=True)
class Place:
    """A user's organisation and role in it."""

    org: Organisation
    role: str

    @property
    def owner(self) -> bool:
        return self.role == "owner"


def place_of(url: str, user_id: int) -> Place:
    """The user's organisation and role; LookupError when the user is gone."""
    with session_scope(url) as session:
        row = session.execute(select(Organisation, Membership.role).join(
            Membership, Membership.org_id == Organisation.id).where(
            Membership.user_id == user_id)).first()
    if row is None:
        raise LookupError(user_id)
    return Place(row[0], row[1])


def get_org(url: str, org_id: int) -> Organisation | None:
    with session_scope(url) as session:
        return session.get(Organisation, org_id)


def plan_live(org: Organisation) -> bool:
    """Whether the organisation's clinic plan is in force."""
    return org.plan == "clinic" and (org.plan_status or "active") in PLAN_LIVE


def members(url: str, org_id: int) -> list[tuple[User, str]]:
    """(user, role) of each member, owners first, then by address."""
    with session_scope(url) as session:
        return [(u, r) for u, r in session.execute(
            select(User, Membership.role).join(Membership, Membership.user_id == User.id)
            .where(Membership.org_id == org_id)
            .order_by(Membership.role.desc(), User.email))]


def rename(url: str, org_id: int, name: str) -> None:
    name = " ".join(name.split())[:200]
    with session_scope(url) as session:
        session.execute(update(Organisation).where(Organisation.id == org_id).values(
            name=name))


def _check_owner(url: str, user_id: int, org_id: int, action: str) -> None:
    """MembershipError unless the user is an owner of the organisation."""
    place = place_of(url, user_id)
    if place.org.id != org_id or not place.owner:
        raise MembershipError(f"only an owner of the organisation can {action}")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(url: str, org_id: int, by_user_id: int, email: str,
           now: dt.datetime | None = None) -> str:
    """Invite ``email`` to the organisation; the token for the link (shown once, only its
    hash is kept). Only an owner may invite; AccountError for a malformed address."""
    now = now or utcnow()
    email = normalise_email(email)
    _check_owner(url, by_user_id, org_id, "invite")
    with session_scope(url) as session:
        count = session.scalar(select(func.count()).select_from(Membership).where(
            Membership.org_id == org_id))
        if count >= MAX_MEMBERS:
            raise MembershipError(f"an organisation has at most {MAX_MEMBERS} members")
        already = session.scalar(select(User.id).join(
            Membership, Membership.user_id == User.id).where(
            User.email == email, Membership.org_id == org_id))
        if already is not None:
            raise MembershipError("that address is a member already")
        token = secrets.token_urlsafe(32)
        session.add(Invitation(org_id=org_id, email=email, token_hash=_token_hash(token),
                               invited_by=by_user_id, created_at=now,
                               expires_at=now + dt.timedelta(days=INVITATION_DAYS)))
    return token


def invitations(url: str, org_id: int, now: dt.datetime | None = None) -> list[Invitation]:
    """The organisation's open invitations, newest first."""
    with session_scope(url) as session:
        return list(session.scalars(select(Invitation).where(
            Invitation.org_id == org_id, Invitation.expires_at > (now or utcnow()))
            .order_by(Invitation.id.desc())))


def find_invitation(url: str, token: str, now: dt.datetime | None = None) -> Invitation:
    """The open invitation of a token; MembershipError when it is unknown or expired."""
    with session_scope(url) as session:
        row = session.scalar(select(Invitation).where(
            Invitation.token_hash == _token_hash(token)))
    if row is None or row.expires_at <= (now or utcnow()):
        raise MembershipError("this invitation is unknown or has expired; ask for a new one")
    return row


def withdraw(url: str, org_id: int, by_user_id: int, invitation_id: int) -> bool:
    """An owner withdraws an open invitation of the organisation; False when it has none
    of that id."""
    _check_owner(url, by_user_id, org_id, "withdraw invitations")
    with session_scope(url) as session:
        return session.execute(delete(Invitation).where(
            Invitation.id == invitation_id, Invitation.org_id == org_id)).rowcount == 1


def accept(url: str, token: str, user_id: int, now: dt.datetime | None = None) -> Organisation:
    """Join the organisation of an invitation addressed to this user's e-mail; the user's
    own organisation is merged into it (credits, ledger, keys, jobs) and closed."""
    now = now or utcnow()
    invitation = find_invitation(url, token, now)
    with session_scope(url) as session:
        user = session.get(User, user_id)
        if user is None or user.email != invitation.email:
            raise MembershipError("this invitation was sent to another address; log in with "
                                  "that one")
        own = session.get(Membership, user_id, with_for_update=True)
        if own.org_id == invitation.org_id:
            raise MembershipError("you are a member already")
        old = session.get(Organisation, own.org_id, with_for_update=True)
        others = session.scalar(select(func.count()).select_from(Membership).where(
            Membership.org_id == old.id, Membership.user_id != user_id))
        if others:
            raise MembershipError("your organisation has other members: remove them first "
                                  "(an organisation is only one level deep)")
        if plan_live(old):
            raise MembershipError("your clinic plan is still running: cancel it under "
                                  "Billing first")
        target = session.get(Organisation, invitation.org_id, with_for_update=True)
        if target is None:
            raise MembershipError("that organisation no longer exists")
        _merge(session, old, target)
        own.org_id, own.role, own.created_at = target.id, "member", now
        session.execute(delete(Invitation).where(Invitation.id == invitation.id))
        session.flush()
        session.delete(old)
        return target


def _merge(session, old: Organisation, target: Organisation) -> None:
    """Move everything of ``old`` into ``target``: its ledger rows and balance (so the
    target's ledger still adds up to its balance), keys, jobs."""
    target.credits += old.credits
    old.credits = 0
    session.flush()
    session.execute(update(CreditEntry).where(CreditEntry.org_id == old.id).values(
        org_id=target.id))
    session.execute(update(ApiKey).where(ApiKey.org_id == old.id).values(org_id=target.id))
    session.execute(update(Job).where(Job.owner == owner_of_org(old.id)).values(
        owner=owner_of_org(target.id)))


def remove(url: str, org_id: int, by_user_id: int, user_id: int,
           now: dt.datetime | None = None) -> None:
    """An owner removes a member, or a member leaves (``by_user_id == user_id``); the member
    gets an organisation of their own, empty. An owner cannot leave or be removed."""
    now = now or utcnow()
    with session_scope(url) as session:
        acting = session.get(Membership, by_user_id)
        member = session.get(Membership, user_id, with_for_update=True)
        if member is None or member.org_id != org_id or acting is None or \
                acting.org_id != org_id:
            raise MembershipError("no such member")
        if by_user_id != user_id and acting.role != "owner":
            raise MembershipError("only an owner can remove members")
        if member.role == "owner":
            raise MembershipError("an owner cannot be removed; the organisation is theirs")
        fresh = Organisation(created_at=now)
        session.add(fresh)
        session.flush()
        member.org_id, member.role, member.created_at = fresh.id, "owner", now
