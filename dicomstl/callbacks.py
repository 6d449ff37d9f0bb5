"""Signed notifications to a clinic's callback URL when one of its API jobs ends.

The body is the job's JSON (as ``GET /api/v1/jobs/{id}`` returns it); the header
``X-Dicomstl-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`` is made with the
API key's webhook secret. It is sent through ``callback_url.post``, which checks the URL's
addresses again and connects only to those it checked. A URL refused at that point (its host
now resolves to an internal address) is logged and dropped; a network error or an answer other
than 2xx (a redirect too: it is never followed) raises, so RQ retries it with backoff.
"""

from __future__ import annotations

import json
import logging
import time

from dicomstl.apikeys import sign
from dicomstl.callback_url import CallbackURLError, post
from dicomstl.db import ApiKey, session_scope
from dicomstl.job_view import public_view
from dicomstl.jobs import callback_settled, get_job
from dicomstl.settings import Settings

SIGNATURE_HEADER = "X-Dicomstl-Signature"

log = logging.getLogger(__name__)


class CallbackFailed(Exception):
    """The receiver answered, but not with a 2xx status."""


def deliver(job_id: str, settings: Settings) -> int:
    """POST the job's state to its callback URL; returns the HTTP status (0: none sent).
    The worker runs it (``gpu_worker.tasks.deliver_callback``)."""
    job = get_job(settings, job_id)
    if not job.callback_url or job.api_key_id is None:
        callback_settled(settings, job_id)
        return 0
    with session_scope(settings.database_url) as session:
        key = session.get(ApiKey, job.api_key_id)
        secret = key.webhook_secret if key else None
    if secret is None:
        callback_settled(settings, job_id)
        return 0
    body = json.dumps({"event": "job.ended", "job": public_view(job)}).encode()
    try:
        answer = post(job.callback_url, body, settings=settings, headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body, int(time.time()))})
    except CallbackURLError as exc:  # the message names the host, never the path or job data
        log.warning("job %s's callback is dropped: %s", job_id[:8], exc)
        callback_settled(settings, job_id)
        return 0
    if not 200 <= answer.status < 300:
        raise CallbackFailed(f"the callback receiver answered HTTP {answer.status}")
    callback_settled(settings, job_id)
    return answer.status
