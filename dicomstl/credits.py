"""Credits: what a conversion costs, and every change of an organisation's balance.

One conversion of an upload up to ``credit_upload_bytes`` (512 MiB) costs one credit; each
further block of that size, or part of one, one more. The balance lives in the
organisation's row and each change is a row of the ledger (``credit_ledger``), written in the
same transaction, so the ledger always adds up to the balance.

Credits are taken with one conditional UPDATE (``credits >= n``) in the transaction that
stores the job, so concurrent submissions never overspend, on SQLite as on PostgreSQL. A job
that ends without a model (failed, or deleted before it was done) gets its credits back,
once. Stripe's payments (``dicomstl.billing``) and the operator (``dicomstl credits grant``)
add credits; a payment's Stripe reference is unique in the ledger, so it adds once. An
organisation merged into another (``dicomstl.organisations.accept``) brings its ledger rows
and balance along.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from dicomstl.db import CreditEntry, Job, Organisation, session_scope, utcnow
from dicomstl.settings import Settings

#: Why a ledger row exists: a credit pack bought, a paid month of the clinic plan, a job
#: accepted, a job's credits given back, the operator's grant.
REASONS = ("purchase", "plan", "job", "refund", "grant")


class NoCredits(Exception):
    """The organisation's balance does not cover the job."""

    def __init__(self, balance: int, needed: int):
        super().__init__(f"not enough credits: the balance is {balance} and this upload "
                         f"needs {needed}")
        self.balance, self.needed = balance, needed


@dataclass(frozen=True)
class Charge:
    """How a job is paid for: ``credits`` from the organisation ``org_id``, or one free
    conversion taken under ``free_quota_key`` (``free_tier.take``), or nothing (an operator's
    key)."""

    org_id: int | None = None
    credits: int = 0
    free_quota_key: str | None = None


def cost(settings: Settings, upload_bytes: int) -> int:
    """Credits a conversion of an upload of ``upload_bytes`` costs (at least 1)."""
    return max(1, math.ceil(upload_bytes / settings.credit_upload_bytes))


def take(session: Session, org_id: int, n: int, job_id: str,
         now: dt.datetime | None = None) -> None:
    """Take ``n`` credits for a job, in the caller's transaction; NoCredits (nothing taken)
    when the balance is short. One conditional UPDATE: two transactions can never both
    take the last credit."""
    taken = session.execute(update(Organisation).where(
        Organisation.id == org_id, Organisation.credits >= n).values(
        credits=Organisation.credits - n).execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        raise NoCredits(int(session.scalar(select(Organisation.credits).where(
            Organisation.id == org_id)) or 0), n)
    session.execute(insert(CreditEntry).values(org_id=org_id, delta=-n, reason="job",
                                               job_id=job_id, created_at=now or utcnow()))


def _add(session: Session, org_id: int, n: int, reason: str, **entry) -> bool:
    """Add ``n`` credits and their ledger row, in the caller's transaction; False when the
    organisation is gone."""
    if session.execute(update(Organisation).where(Organisation.id == org_id).values(
            credits=Organisation.credits + n)).rowcount != 1:
        return False
    session.add(CreditEntry(org_id=org_id, delta=n, reason=reason,
                            created_at=entry.pop("now", None) or utcnow(), **entry))
    return True


def give_back(session: Session, job_id: str, now: dt.datetime | None = None) -> str | None:
    """Give back what a job that never made a model paid, once: its credits, to its
    organisation, in the caller's transaction. The job's ``free_quota_key`` when this call
    gave back a free conversion (the caller gives it back in Redis after the commit:
    ``free_tier.give_back``); None otherwise, or when it was given back before."""
    claimed = session.execute(update(Job).where(
        Job.id == job_id, Job.payment_returned.is_(False), Job.result_bytes.is_(None),
        (Job.credits > 0) | Job.free_quota_key.is_not(None)).values(
        payment_returned=True)).rowcount
    if claimed != 1:
        return None
    owner, n, free_key = session.execute(select(Job.owner, Job.credits, Job.free_quota_key)
                                         .where(Job.id == job_id)).one()
    org_id = org_of_owner(owner)
    if n and org_id is not None:
        _add(session, org_id, n, "refund", job_id=job_id, now=now)
    return free_key


def grant(session: Session, org_id: int, n: int, reason: str, *,
          stripe_ref: str | None = None, amount_cents: int | None = None,
          currency: str | None = None, now: dt.datetime | None = None) -> bool:
    """Add ``n`` credits in the caller's transaction; False (nothing added) when
    ``stripe_ref`` was granted before or the organisation is gone. Two transactions granting
    the same ``stripe_ref`` at once: the unique index fails the second (IntegrityError),
    which its caller rolls back and retries."""
    if reason not in REASONS or n <= 0:
        raise ValueError(f"a grant of {n} credits for {reason!r}")
    if stripe_ref is not None and session.scalar(select(CreditEntry.id).where(
            CreditEntry.stripe_ref == stripe_ref)) is not None:
        return False
    if not _add(session, org_id, n, reason, stripe_ref=stripe_ref, amount_cents=amount_cents,
                currency=currency.lower() if currency else None, now=now):
        return False
    session.flush()
    return True


def org_of_owner(owner: str) -> int | None:
    """The organisation id of a job owner ``org:<id>``; None for other owners."""
    kind, _, value = owner.partition(":")
    return int(value) if kind == "org" and value.isdigit() else None


def owner_of_org(org_id: int) -> str:
    """The job owner string of an organisation's jobs."""
    return f"org:{org_id}"


def balance(url: str, org_id: int) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(Organisation.credits).where(
            Organisation.id == org_id)) or 0)


def history(url: str, org_id: int, limit: int = 100) -> list[CreditEntry]:
    """The organisation's ledger, newest first."""
    with session_scope(url) as session:
        return list(session.scalars(select(CreditEntry).where(CreditEntry.org_id == org_id)
                                    .order_by(CreditEntry.id.desc()).limit(limit)))


def used_since(url: str, org_id: int, since: dt.datetime) -> int:
    """Credits jobs used since ``since`` (taken less given back)."""
    with session_scope(url) as session:
        total = session.scalar(select(func.sum(CreditEntry.delta)).where(
            CreditEntry.org_id == org_id, CreditEntry.reason.in_(("job", "refund")),
            CreditEntry.created_at >= since))
    return -int(total or 0)


def ledger_total(url: str, org_id: int) -> int:
    """The sum of the organisation's ledger (equal to its balance)."""
    with session_scope(url) as session:
        return int(session.scalar(select(func.sum(CreditEntry.delta)).where(
            CreditEntry.org_id == org_id)) or 0)
