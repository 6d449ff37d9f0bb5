"""The bulk API for clinics, ``/api/v1`` (JSON; see ``/api/v1/openapi.json``).

Every call but the OpenAPI document needs ``Authorization: Bearer <API key>``; a key sees only
its organisation's jobs (an operator's key, its own). ``POST /jobs`` takes a multipart upload
(``files``: DICOM files or one .zip; ``options``: a JSON object; ``callback_url``), honours an
``Idempotency-Key`` header and takes the organisation's credits (402 when they do not cover
it). ``GET /account`` and ``GET /account/export`` also answer a logged-in browser.
"""

from __future__ import annotations

import json

from flask import Blueprint, abort, current_app, g, jsonify, request, url_for

from dicomstl import apikeys, jobs, privacy
from dicomstl.callback_url import CallbackURLError, check_callback_url
from dicomstl.credits import NoCredits
from dicomstl.errors import ConversionError
from dicomstl.job_view import public_view
from dicomstl.options import parse_options
from web import charging, login
from web.ip_log import logged_as
from web.metrics import count_upload
from web.openapi import spec
from web.previews import no_store, preview_json, preview_png
from web.results import send_result
from web.uploads import file_digests, take_files

api = Blueprint("api", __name__)

PUBLIC = {"api.openapi"}
#: Routes a logged-in browser may call with its session instead of a key (reads only).
SESSION_TOO = {"api.account", "api.export_account"}
MAX_OFFSET = 10**9


@api.before_request
def authenticate():
    if request.endpoint in PUBLIC:
        return None
    row = login.request_key()
    if row is not None:
        g.owner, g.org, g.user_id = apikeys.owner_of(row), row.org, None
        return None
    me = login.account()
    if request.endpoint in SESSION_TOO and me is not None \
            and "Authorization" not in request.headers:
        g.owner, g.org, g.user_id = me.jobs_owner, me.org, me.id
        return None
    return {"error": "a valid API key is needed: Authorization: Bearer <key>"}, 401, \
        {"WWW-Authenticate": 'Bearer realm="dicomstl"'}


def _view(job) -> dict:
    view = public_view(job)
    view["links"] = {"self": url_for("api.get_job", job_id=job.id)}
    if job.state == "done":
        view["links"]["result"] = url_for("api.result", job_id=job.id)
    if jobs.awaits_level(job):
        view["links"]["preview"] = url_for("api.preview", job_id=job.id)
        view["links"]["level"] = url_for("api.choose_level", job_id=job.id)
    return view


def _job(job_id: str):
    try:
        return jobs.get_job(current_app.config["SETTINGS"], job_id, g.owner)
    except jobs.JobNotFound:
        abort(404, "no such job")


def _bad(message: str, code: int = 400):
    return {"error": message}, code


@api.after_request
def no_store_previews(response):
    """Preview answers are never cached, errors included (``web.previews``)."""
    if request.endpoint in ("api.preview", "api.preview_slice"):
        no_store(response)
    return response


@api.get("/openapi.json")
def openapi():
    return spec(current_app.config["SETTINGS"])


@api.post("/jobs")
@logged_as("api")
def submit():
    settings = current_app.config["SETTINGS"]
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not 1 <= len(key) <= 200:
        return _bad("Idempotency-Key must be 1 to 200 characters")
    callback = request.form.get("callback_url") or None
    if callback is not None:
        try:
            check_callback_url(callback, settings)
        except CallbackURLError as exc:
            return _bad(str(exc))
    try:
        raw = json.loads(request.form.get("options") or "{}")
    except ValueError:
        return _bad("options must be a JSON object")
    try:
        options = parse_options(raw)
        files = take_files()
    except ConversionError as exc:
        return _bad(str(exc))
    api_key = login.request_key()
    try:
        earlier = key and jobs.find_idempotent(settings.database_url, g.owner, key)
        charge = None if earlier else charging.for_key(  # the balance: when it is taken
            api_key, sum(f.stat().st_size for f in files), check_balance=False)
        job, created = jobs.create_job(
            settings, g.owner, options, files, "bulk", idempotency_key=key,
            callback_url=callback,
            submitted_hash=jobs.request_hash(options, callback, file_digests(files)),
            charge=charge, api_key_id=api_key.id)
    except jobs.IdempotencyConflict as exc:
        return _bad(str(exc), 422)
    except (NoCredits, charging.PlanRequired) as exc:
        return charging.refusal(exc)
    if created:
        count_upload("api", job.upload_bytes)
    return _view(job), 201 if created else 200, {"Location": url_for("api.get_job",
                                                                    job_id=job.id)}


@api.get("/jobs")
@logged_as("api")
def list_jobs():
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        return _bad("limit and offset must be whole numbers")
    if not 1 <= limit <= 200 or not 0 <= offset <= MAX_OFFSET:
        return _bad(f"limit must be 1 to 200 and offset 0 to {MAX_OFFSET}")
    rows, total = jobs.list_jobs(current_app.config["SETTINGS"], g.owner, limit, offset)
    following = offset + limit if offset + limit < total else None
    return {"jobs": [_view(j) for j in rows], "total": total, "limit": limit,
            "offset": offset, "next_offset": following}


@api.get("/jobs/<job_id>")
@logged_as("api")
def get_job(job_id: str):
    return _view(_job(job_id))


@api.get("/jobs/<job_id>/result")
@logged_as("api")
def result(job_id: str):
    return send_result(current_app.config["SETTINGS"], _job(job_id))


@api.delete("/jobs/<job_id>")
@logged_as("api")
def delete(job_id: str):
    _job(job_id)
    return _view(jobs.delete_job(current_app.config["SETTINGS"], job_id, g.owner))


@api.post("/jobs/<job_id>/series")
@logged_as("api")
def choose(job_id: str):
    _job(job_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("series"), str):
        return _bad('send {"series": "<SeriesInstanceUID from choices>"}')
    try:
        job = jobs.choose_series(current_app.config["SETTINGS"], job_id, g.owner,
                                 body["series"])
    except jobs.JobConflict as exc:
        return _bad(str(exc), 409)
    return _view(job)


@api.get("/jobs/<job_id>/preview")
@logged_as("api")
def preview(job_id: str):
    return preview_json(current_app.config["SETTINGS"], _job(job_id), lambda plane: url_for(
        "api.preview_slice", job_id=job_id, plane=plane))


@api.get("/jobs/<job_id>/preview/<plane>.png")
@logged_as("api")
def preview_slice(job_id: str, plane: str):
    return preview_png(current_app.config["SETTINGS"], _job(job_id), plane)


@api.post("/jobs/<job_id>/level")
@logged_as("api")
def choose_level(job_id: str):
    _job(job_id)
    body = request.get_json(silent=True)
    level = body.get("level") if isinstance(body, dict) else None
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        return _bad('send {"level": <number: HU for CT, stored units for MR>}')
    try:
        job = jobs.choose_level(current_app.config["SETTINGS"], job_id, g.owner, level)
    except jobs.JobConflict as exc:
        return _bad(str(exc), 409)
    except ConversionError as exc:
        return _bad(str(exc))
    return _view(job)


@api.get("/account")
@logged_as("api")
def account():
    """The organisation's balance and plan (an operator's key has neither)."""
    if g.org is None:
        return _bad("this key belongs to no account (an operator's key)", 404)
    settings, org = current_app.config["SETTINGS"], g.org  # read with the key or account
    return {"organisation": org.name, "credits": org.credits, "plan": org.plan,
            "plan_status": org.plan_status,
            "credit_upload_bytes": settings.credit_upload_bytes,
            "pricing_url": url_for("billing.pricing")}


@api.get("/account/export")
@logged_as("api")
def export_account():
    """Everything held about the account (a logged-in browser) or the key's organisation,
    as a JSON download."""
    if g.org is None:
        return _bad("this key belongs to no account (an operator's key)", 404)
    data = privacy.export(current_app.config["SETTINGS"], user_id=g.user_id, org_id=g.org.id)
    response = jsonify(data)
    response.headers["Content-Disposition"] = 'attachment; filename="dicomstl-export.json"'
    response.headers["Cache-Control"] = "no-store"
    return response
