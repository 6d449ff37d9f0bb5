"""What a job's owner may see of it, as JSON: what the API answers, the job page polls and a
callback carries. No paths, no owner, no patient data.

It lives on the ground floor, not in ``web/``, because the callback that POSTs it is run by
the worker, which must not import the web app.
"""

from __future__ import annotations

import datetime as dt

from dicomstl.db import Job
from dicomstl.options import STAGES


def iso(value: dt.datetime | None) -> str | None:
    """A UTC time as ISO 8601 with a Z (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def public_view(job: Job) -> dict:
    """The job as its owner sees it (times in UTC, ISO 8601 with a Z)."""
    done = [s for s in STAGES if s in (job.stages_done or [])]
    return {
        "id": job.id, "state": job.state, "queue": job.queue, "options": job.options,
        "created_at": iso(job.created_at), "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "deleted_at": iso(job.deleted_at), "delete_after": iso(job.delete_after),
        "attempts": job.attempts, "stage": job.stage, "stages": list(STAGES),
        "stages_done": done, "progress": round(len(done) / len(STAGES), 3)
        if job.state != "done" else 1.0,
        "message": job.message, "choices": job.choices, "report": job.report,
        "upload": {"files": job.upload_files, "bytes": job.upload_bytes},
        "result_bytes": job.result_bytes, "credits": job.credits or 0,
    }
