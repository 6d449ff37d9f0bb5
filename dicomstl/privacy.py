"""The privacy rights, self-service: export everything held about an account, and erase it.

Export is one JSON document: the profile, the organisation (plan, balance, members), API
keys (prefixes only), every job's metadata, the credit ledger, payment references, the IP
log rows and inquiries linked to the account.

Erasure happens at once, not at the next sweep. For an account alone in its organisation:
its jobs (files, Redis entries, rows), keys and their rate-limit counters, ledger, IP-log
rows, inquiries, invitations, mail copies and the account itself go; at Stripe its
customer is deleted (which ends a subscription there). What the law makes us keep stays:
each payment's reference, amount and date (``credit_ledger`` rows of purchases and plan
months), cut loose from the account (``erased_at`` set) and deleted after
``retention_policy.INVOICE_KEEP`` (the scheduler's row rule). An account in a clinic's
organisation leaves it: the clinic's jobs, keys and credits are the clinic's and stay (an
owner who leaves hands ownership to the longest-standing member).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from sqlalchemy import delete, or_, select, update

from dicomstl import billing, jobs
from dicomstl import queue as q
from dicomstl.apikeys import rate_limit_id
from dicomstl.credits import owner_of_org
from dicomstl.db import (
    ApiKey,
    CreditEntry,
    Inquiry,
    Invitation,
    IpLogEntry,
    Job,
    Membership,
    Organisation,
    User,
    session_scope,
    utcnow,
)
from dicomstl.job_view import iso
from dicomstl.organisations import get_org, members, place_of
from dicomstl.retention_policy import promises
from dicomstl.settings import Settings

log = logging.getLogger(__name__)
#: Ledger reasons that are payments: kept as invoice references when an account is erased.
PAYMENTS = ("purchase", "plan")


@dataclass(frozen=True)
class Erased:
    """What an erasure removed and kept (counts: no ids, it outlives the account)."""

    jobs: int
    keys: int
    kept_payments: int
    left_organisation: bool


def export(settings: Settings, user_id: int | None = None,
           org_id: int | None = None) -> dict:
    """Everything held about an account (``user_id``: its profile, organisation, IP log and
    inquiries) or about an organisation (``org_id`` alone, an API key's: without anyone's
    profile), as JSON-ready data (times in UTC, ISO 8601)."""
    url = settings.database_url
    user = role = None
    if user_id is not None:
        place = place_of(url, user_id)
        org, role = place.org, place.role
        user = _user(url, user_id)
    else:
        org = get_org(url, org_id)
        if org is None:
            raise LookupError(org_id)
    with session_scope(url) as session:
        keys = list(session.scalars(select(ApiKey).where(ApiKey.org_id == org.id)))
        org_jobs = list(session.scalars(select(Job).where(Job.owner == owner_of_org(org.id))
                                        .order_by(Job.created_at)))
        ledger = list(session.scalars(select(CreditEntry).where(CreditEntry.org_id == org.id)
                                      .order_by(CreditEntry.id)))
        ips = list(session.scalars(select(IpLogEntry).where(IpLogEntry.account_id == user.id)
                                   .order_by(IpLogEntry.id))) if user else []
        inquiries = list(session.scalars(select(Inquiry).where(or_(
            Inquiry.account_id == user.id, Inquiry.email == user.email)))) if user else []
    return {
        "exported_at": iso(utcnow()),
        "account": user and {
            "id": user.id, "email": user.email, "created_at": iso(user.created_at),
            "confirmed_at": iso(user.confirmed_at), "last_login_at": iso(user.last_login_at)},
        "organisation": {
            "id": org.id, "name": org.name, "your_role": role, "plan": org.plan,
            "plan_status": org.plan_status, "plan_period_end": iso(org.plan_period_end),
            "credits": org.credits, "stripe_customer_id": org.stripe_customer_id,
            "stripe_subscription_id": org.stripe_subscription_id,
            "members": [{"email": u.email, "role": r} for u, r in members(url, org.id)]},
        "api_keys": [{"prefix": k.prefix, "name": k.name, "created_at": iso(k.created_at),
                      "last_used_at": iso(k.last_used_at), "revoked_at": iso(k.revoked_at)}
                     for k in keys],
        "jobs": [{"id": j.id, "state": j.state, "queue": j.queue, "options": j.options,
                  "created_at": iso(j.created_at), "finished_at": iso(j.finished_at),
                  "deleted_at": iso(j.deleted_at), "delete_after": iso(j.delete_after),
                  "upload_files": j.upload_files, "upload_bytes": j.upload_bytes,
                  "result_bytes": j.result_bytes, "credits": j.credits,
                  "message": j.message} for j in org_jobs],
        "credit_ledger": [{"delta": e.delta, "reason": e.reason, "job_id": e.job_id,
                           "created_at": iso(e.created_at)} for e in ledger],
        "payments": [{"stripe_reference": e.stripe_ref, "credits": e.delta,
                      "amount_cents": e.amount_cents, "currency": e.currency,
                      "created_at": iso(e.created_at)}
                     for e in ledger if e.reason in PAYMENTS],
        "ip_log": [{"ip": r.ip, "kind": r.kind, "route": r.route,
                    "created_at": iso(r.created_at)} for r in ips],
        "inquiries": [{"email": i.email, "message": i.message,
                       "created_at": iso(i.created_at)} for i in inquiries],
        "retention": promises(settings),
    }


def erase(settings: Settings, user_id: int, now: dt.datetime | None = None) -> Erased:
    """Erase the account now (see the module's text); LookupError when it is gone."""
    now = now or utcnow()
    url = settings.database_url
    place = place_of(url, user_id)
    user = _user(url, user_id)
    others = [u for u, _role in members(url, place.org.id) if u.id != user_id]
    n_jobs = n_keys = kept = 0
    if others:
        if place.owner:
            _hand_over(url, place.org.id, others)
    else:
        n_jobs, n_keys, kept = _erase_organisation(settings, place.org, now)
    with session_scope(url) as session:
        session.execute(delete(IpLogEntry).where(IpLogEntry.account_id == user_id))
        session.execute(delete(Inquiry).where(or_(Inquiry.account_id == user_id,
                                                  Inquiry.email == user.email)))
        session.execute(delete(Invitation).where(Invitation.email == user.email))
        session.execute(delete(User).where(User.id == user_id))  # its membership too
    _delete_mail_to(settings, user.email)
    log.info("an account was erased (%d jobs, %d keys; %d payment references kept)",
             n_jobs, n_keys, kept)
    return Erased(n_jobs, n_keys, kept, bool(others))


def _user(url: str, user_id: int) -> User:
    with session_scope(url) as session:
        user = session.get(User, user_id)
    if user is None:
        raise LookupError(user_id)
    return user


def _hand_over(url: str, org_id: int, others: list[User]) -> None:
    """The owner leaves: the longest-standing other member owns the organisation now,
    unless another owner remains."""
    with session_scope(url) as session:
        rows = session.execute(select(Membership).where(
            Membership.org_id == org_id, Membership.user_id.in_([u.id for u in others]))
            .order_by(Membership.created_at, Membership.user_id)).scalars().all()
        if not any(m.role == "owner" for m in rows):
            rows[0].role = "owner"


def _erase_organisation(settings: Settings, org: Organisation,
                        now: dt.datetime) -> tuple[int, int, int]:
    """Delete an organisation of one and all it holds; (jobs, keys, payments kept)."""
    url = settings.database_url
    owner = owner_of_org(org.id)
    with session_scope(url) as session:
        job_ids = list(session.scalars(select(Job.id).where(Job.owner == owner)))
        keys = list(session.scalars(select(ApiKey).where(ApiKey.org_id == org.id)))
    for job_id in job_ids:  # files and queue entries at once; a running one stops
        jobs.delete_job(settings, job_id, owner)
    _delete_rate_limits(settings, [rate_limit_id(k) for k in keys])
    if org.stripe_customer_id:
        billing.delete_customer(settings, org.stripe_customer_id)
    with session_scope(url) as session:
        session.execute(delete(Job).where(Job.owner == owner))
        kept = session.execute(update(CreditEntry).where(
            CreditEntry.org_id == org.id, CreditEntry.reason.in_(PAYMENTS),
            CreditEntry.stripe_ref.is_not(None)).values(
            org_id=None, job_id=None, erased_at=now)).rowcount
        session.execute(delete(CreditEntry).where(CreditEntry.org_id == org.id))
        session.execute(delete(Organisation).where(Organisation.id == org.id))  # keys too
    return len(job_ids), len(keys), kept


def _delete_rate_limits(settings: Settings, ids: list[str]) -> None:
    """Delete the rate-limit counters Redis holds for these keys (named by ``rate_limit_id``:
    a hash, never the key or its prefix)."""
    if not ids or settings.redis_url is None:
        return
    try:
        connection = q.connect(settings.redis_url)
        for name in connection.scan_iter(match="*key-*", count=1000):  # one pass for all
            if any(limit_id.encode() in name for limit_id in ids):
                connection.delete(name)
    except RedisError:
        log.warning("could not delete an erased account's rate-limit counters (they expire "
                    "within the limits' windows)")


def _delete_mail_to(settings: Settings, address: str) -> int:
    """Delete the copies of messages to ``address`` in the mail folder; how many."""
    if not settings.mail_dir.is_dir():
        return 0
    removed = 0
    for path in settings.mail_dir.glob("*.eml"):
        try:
            with path.open("rb") as fh:
                msg = email.message_from_binary_file(fh, policy=email.policy.default)
        except OSError:
            continue
        if address.lower() in str(msg.get("To", "")).lower():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
