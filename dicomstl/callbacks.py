"""Signed notifications to a clinic's callback URL when one of its API jobs ends.

The body is the job's JSON (as ``GET /api/v1/jobs/{id}`` returns it); the header
``X-Dicomstl-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`` is made with the
API key's webhook secret. A failed delivery raises, so RQ retries it with backoff.
"""

from __future__ import annotations

import json
import time

import requests

from dicomstl.apikeys import sign
from dicomstl.db import ApiKey, session_scope
from dicomstl.jobs import get_job, public_view
from dicomstl.settings import current_settings

SIGNATURE_HEADER = "X-Dicomstl-Signature"


def deliver(job_id: str) -> int:
    """POST the job's state to its callback URL; returns the HTTP status."""
    settings = current_settings()
    job = get_job(settings, job_id)
    if not job.callback_url or not job.owner.startswith("key:"):
        return 0
    with session_scope(settings.database_url) as session:
        key = session.get(ApiKey, int(job.owner.removeprefix("key:")))
        secret = key.webhook_secret if key else None
    if secret is None:
        return 0
    body = json.dumps({"event": "job.ended", "job": public_view(job)}).encode()
    response = requests.post(
        job.callback_url, data=body, timeout=settings.callback_timeout_s, allow_redirects=False,
        headers={"Content-Type": "application/json",
                 SIGNATURE_HEADER: sign(secret, body, int(time.time()))})
    response.raise_for_status()
    return response.status_code
