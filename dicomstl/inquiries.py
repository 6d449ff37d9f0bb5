"""Messages from the contact form: stored for the people who answer them, deleted after 12
months by the scheduler (``retention_policy.ROW_RULES``)."""

from __future__ import annotations

from dicomstl.accounts import normalise_email
from dicomstl.db import Inquiry, session_scope, utcnow

MESSAGE_MAX = 5000


class InquiryError(ValueError):
    """The message cannot be taken (the text says why)."""


def record(url: str, email: str, message: str, account_id: int | None = None) -> int:
    """Store an inquiry; its id. AccountError for a malformed address, InquiryError for an
    empty or too long message."""
    email = normalise_email(email)
    message = message.strip()
    if not 1 <= len(message) <= MESSAGE_MAX:
        raise InquiryError(f"the message must be 1 to {MESSAGE_MAX} characters")
    with session_scope(url) as session:
        row = Inquiry(email=email, message=message, account_id=account_id,
                      created_at=utcnow())
        session.add(row)
        session.flush()
        return row.id
