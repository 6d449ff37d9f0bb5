"""Sending a job's threshold preview (made by the worker, stored with the upload): the JSON
and the slice PNGs, never cached (``Cache-Control: no-store``: they are patient images).

Both the job page's routes and the API's use it; each passes how to name a slice's URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flask import Response, jsonify, send_file

from dicomstl import jobs, storage
from dicomstl.db import Job
from dicomstl.settings import Settings

PLANES = ("axial", "coronal", "sagittal")  # gpu_worker.preview.PLANES (web does not import it)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
NOT_READY = ("the preview is not ready yet: the job is {state}; poll the job until its "
             "state is uploaded (a series may have to be chosen first)")
NONE = ("this job has no preview: ask for one with the option preview (the form's "
        "\"Preview the threshold first\"); a preview is deleted with the upload, when the "
        "conversion ends")


def no_store(response: Response) -> Response:
    response.headers.update(NO_STORE)
    return response


def _missing(job: Job) -> Response:
    pending = jobs.preview_pending(job)
    response = jsonify(error=NOT_READY.format(state=job.state) if pending else NONE)
    response.status_code = 409 if pending else 404
    return no_store(response)


def preview_json(settings: Settings, job: Job, slice_url: Callable[[str], str]) -> Response:
    """The preview's JSON with each slice's ``url``; 409 while it is being made, 404 when
    the job has none."""
    path = storage.preview_dir(settings, job.id) / "preview.json"
    if not jobs.awaits_level(job) or not path.is_file():
        return _missing(job)
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:  # deleted a moment ago
        return _missing(job)
    for item in body["slices"]:
        item["url"] = slice_url(item["plane"])
    return no_store(jsonify(body))


def preview_png(settings: Settings, job: Job, plane: str) -> Response:
    """One slice image (8-bit greyscale PNG); 404 for an unknown plane."""
    if plane not in PLANES:
        response = jsonify(error=f"no such plane; the planes are {', '.join(PLANES)}")
        response.status_code = 404
        return no_store(response)
    path = storage.preview_dir(settings, job.id) / f"{plane}.png"
    if not jobs.awaits_level(job) or not path.is_file():
        return _missing(job)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return _missing(job)
    return no_store(send_file(handle, mimetype="image/png", max_age=0, etag=False,
                              last_modified=None, conditional=False))
