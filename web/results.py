"""Sending a job's model (the form's download and the API's ``/result`` alike)."""

from __future__ import annotations

from flask import abort, send_file

from dicomstl import retention_policy as policy
from dicomstl import storage
from dicomstl.db import Job
from dicomstl.options import result_format
from dicomstl.settings import Settings


def send_result(settings: Settings, job: Job, as_attachment: bool = True):
    """The model file of a done job; 409 before it is done, 410 once it is deleted."""
    if job.state == "deleted":
        abort(410, policy.deleted_result_message(settings))
    if job.state != "done":
        abort(409, f"the job is {job.state}; the model is there once it is done")
    fmt = result_format(job.options)
    path = storage.result_path(settings, job.id, fmt)
    if not path.is_file():
        abort(410, "the model was deleted")
    mimetype = {"3mf": "model/3mf", "zip": "application/zip"}.get(fmt, "model/stl")
    return send_file(path, mimetype=mimetype, as_attachment=as_attachment,
                     download_name=path.name, max_age=0)
