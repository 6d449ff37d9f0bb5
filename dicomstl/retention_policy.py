"""The retention promises: how long each kind of data is kept, the deadline of a job's files,
and the sentences that tell users so (the pages, the API document, job messages), all made
from the same numbers. ``scheduler/`` enforces them.

- a job's raw upload: until its conversion ends (done or failed);
- a job's files: until the deadline in its row (``jobs.delete_after``): the upload's arrival
  + ``upload_ttl_s`` while it waits, the longest its run may take while it runs, the
  conversion's end + ``result_ttl_s`` after;
- a job's Redis entries: as long as its files;
- upload parts of requests that never finished: ``upload_ttl_s`` after their last byte;
- copies of e-mails in the mail folder: ``mail_keep_s`` (7 days);
- table rows: ``ROW_RULES`` (the IP log 30 days; a deleted job's row, which only says that it
  was deleted, 30 days; contact-form inquiries 12 months; invitations when they expire;
  Stripe event ids 30 days; payment references of erased accounts after the legal window).

``promises`` says all of it in words, for the privacy page and the data export: the same
numbers the scheduler enforces, so the two cannot disagree.

Times are UTC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import column, table

from dicomstl.db import UTCDateTime, utcnow
from dicomstl.settings import Settings

#: What a deleted job keeps of its report: the model's numbers, nothing about the series.
KEPT_REPORT = ("mesh", "bytes", "level", "level_source", "backend", "volume_shape_kji",
               "timings_s")

#: RQ's own expiry of a job's entries comes this long (seconds) after the job's deadline: the
#: scheduler deletes them at the deadline, with their places in RQ's registries (an entry
#: that expired first would leave those behind); the expiry only backs it up.
QUEUE_EXPIRY_MARGIN_S = 600


@dataclass(frozen=True)
class RowRule:
    """Rows of ``table`` are deleted once their ``column`` (a UTC time) is older than
    ``window``; rows where it is NULL are kept. ``what`` and ``after`` say it in words (the
    privacy page)."""

    kind: str
    table: str
    column: str
    window: dt.timedelta
    what: str = ""
    after: str = ""

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        return now - self.window

    def rows_before(self, cutoff: dt.datetime):
        """The rule's table, and the condition selecting its rows older than ``cutoff``."""
        rows = table(self.table, column(self.column, UTCDateTime()))
        return rows, rows.c[self.column] < cutoff


#: How long payment references (the Stripe reference, amount and date of each purchase) of
#: an erased account are kept: the longest bookkeeping retention among our markets.
INVOICE_KEEP = dt.timedelta(days=10 * 365)

ROW_RULES: tuple[RowRule, ...] = (
    RowRule("ip_log", "ip_log", "created_at", dt.timedelta(days=30),
            "the IP log (your address, the time and the kind of request, for abuse "
            "review and rate limits)", "after it was written"),
    RowRule("job_record", "jobs", "deleted_at", dt.timedelta(days=30),
            "the record of a deleted job (that it existed and was deleted; no files)",
            "after the job's files were deleted"),
    RowRule("inquiry", "inquiries", "created_at", dt.timedelta(days=365),
            "messages sent with the contact form", "after they arrived"),
    RowRule("invitation", "invitations", "expires_at", dt.timedelta(0),
            "invitations to an organisation (the address invited)",
            "when they expire (7 days), or at once when accepted"),
    RowRule("stripe_event", "stripe_events", "received_at", dt.timedelta(days=30),
            "the ids of payment events received from Stripe (no personal data)",
            "after they arrived"),
    RowRule("payment_record", "credit_ledger", "erased_at", INVOICE_KEEP,
            "payment references of an erased account (Stripe reference, amount, date: "
            "the law makes us keep them)", "after the account was erased"),
)


# Deadlines of a job's files ------------------------------------------------------------------

def upload_deadline(settings: Settings, arrived: dt.datetime | None = None) -> dt.datetime:
    """When an upload that is never converted is deleted."""
    return (arrived or utcnow()) + dt.timedelta(seconds=settings.upload_ttl_s)


def run_deadline(settings: Settings, started: dt.datetime) -> dt.datetime:
    """The latest a run started at ``started`` can end (its limit, then the time the
    scheduler takes to notice a lost worker): its upload is kept until then."""
    return started + dt.timedelta(seconds=settings.job_timeout_s + settings.stall_after_s)


def result_deadline(settings: Settings, ended: dt.datetime | None = None) -> dt.datetime:
    """When the model of a conversion that ended at ``ended`` is deleted."""
    return (ended or utcnow()) + dt.timedelta(seconds=settings.result_ttl_s)


# What users read -----------------------------------------------------------------------------

def duration_words(seconds: float) -> str:
    """``3600`` -> "one hour", ``5400`` -> "90 minutes", ``172800`` -> "2 days", ``10 * 365``
    days -> "10 years"."""
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60),
                       ("second", 1)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"one {unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"


def result_kept(settings: Settings) -> str:
    """How long a model is kept after its conversion: "one hour"."""
    return duration_words(settings.result_ttl_s)


def summary(settings: Settings) -> str:
    """The promise in one sentence (the footer, the API document)."""
    return (f"Uploads are deleted when the conversion ends, models {result_kept(settings)} "
            "later (each job's delete_after says when).")


def deleted_result_message(settings: Settings) -> str:
    """Why a deleted job's download answers 410."""
    return (f"the model was deleted (results are kept for {result_kept(settings)} after "
            "conversion)")


def unconverted_message(settings: Settings) -> str:
    """A job deleted at its deadline before it was converted."""
    return (f"the upload was deleted unconverted, {duration_words(settings.upload_ttl_s)} "
            "after it arrived")


OVERRUN_MESSAGE = ("the upload was deleted: its conversion ran past the longest a conversion "
                   "may take")


def promises(settings: Settings) -> list[dict[str, str]]:
    """Every retention window, in words: what is kept, and for how long (the privacy page,
    the data export). Made from the settings and ``ROW_RULES`` the scheduler enforces."""
    def span(delta: dt.timedelta) -> str:
        return duration_words(delta.total_seconds()) if delta else "no longer"

    kept = [
        {"what": "your upload (the DICOM files) and the threshold preview made from it",
         "kept": "until the conversion ends (done or failed); an upload never converted "
                 f"{duration_words(settings.upload_ttl_s)} after it arrived"},
        {"what": "the model (STL or 3MF) and its report",
         "kept": f"{result_kept(settings)} after the conversion, or until you delete it"},
        {"what": "copies of e-mails we sent you, on our server",
         "kept": duration_words(settings.mail_keep_s)},
    ]
    kept += [{"what": rule.what, "kept": f"{span(rule.window)} {rule.after}".strip()
              if rule.window else rule.after} for rule in ROW_RULES]
    kept += [
        {"what": "your account: e-mail address, password hash (argon2), organisation, API "
                 "key hashes, the credit ledger, job records",
         "kept": "until you erase the account (the account page does it at once)"},
        {"what": "card and bank details", "kept": "never: Stripe holds them, not us"},
    ]
    return kept
