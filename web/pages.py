"""Server-rendered pages: upload form, series choice, job page with live progress and preview.

A browser's jobs belong to its logged-in account's organisation, or, for a visitor, to its
session (``web.login``). Others' jobs are "not found". An upload is paid for in credits or
from the free tier (``web.charging``).
"""

from __future__ import annotations

from pathlib import Path

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from dicomstl import free_tier, jobs
from dicomstl.credits import NoCredits
from dicomstl.errors import ConversionError
from dicomstl.free_tier import FreeTierRefused
from dicomstl.job_view import public_view
from dicomstl.options import FORMATS, LIMITS, PRESETS, STAGES, form_options
from dicomstl.settings import Settings
from web import charging, login
from web.errors import answer, wants_json
from web.ip_log import logged_as
from web.login import browser_owner
from web.metrics import count_upload
from web.openapi import spec
from web.previews import no_store, preview_json, preview_png
from web.results import send_result
from web.uploads import take_files

pages = Blueprint("pages", __name__)
STATIC = Path(__file__).parent / "static"

#: What the form starts with: the options most people want for a first print (the largest
#: part only, so the CT table and the head holder go; about 25 MB of binary STL). The API
#: and the command line keep the plain iso-surface as their default.
FORM_DEFAULTS = {"keep": "largest", "max_triangles": 500_000}


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _job(job_id: str):
    owner = browser_owner()
    if owner is None:
        abort(404, "no such job (it may have been deleted)")
    try:
        return jobs.get_job(_settings(), job_id, owner)
    except jobs.JobNotFound:
        abort(404, "no such job (it may have been deleted)")


@pages.after_request
def no_store_previews(response):
    """Preview answers are never cached, errors included (``web.previews``)."""
    if request.endpoint in ("pages.threshold_preview", "pages.threshold_slice"):
        no_store(response)
    return response


@pages.get("/")
def home():
    settings = _settings()
    me = login.account()
    return render_template("home.html", presets=PRESETS.values(), formats=FORMATS,
                           limits=LIMITS, defaults=FORM_DEFAULTS, me=me,
                           balance=me.org.credits if me else None,
                           free_left=None if me else free_tier.left(
                               settings, request.remote_addr or ""),
                           free_per_day=settings.free_conversions_per_day,
                           free_mb=settings.free_upload_bytes / 1024**2)


@pages.get("/api")
def api_docs():
    """The bulk API for people: every operation of the OpenAPI document, with examples."""
    return render_template("api.html", spec=spec(_settings()))


@pages.get("/favicon.ico")
def favicon():
    return send_file(STATIC / "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)


@pages.post("/upload")
@logged_as("upload")
def upload():
    """The form's upload: files (a folder's or a zip) plus options; answers where to go next."""
    try:
        options = form_options(request.form, list(zip(
            *(request.form.getlist(f"segment_{field}") for field in ("name", "spec", "color")),
            strict=False)))
        parts = take_files()
    except ConversionError as exc:
        return answer(400, str(exc))
    try:
        charge = charging.for_browser(sum(part.stat().st_size for part in parts))
        job, _created = jobs.create_job(_settings(), browser_owner(create=True), options,
                                        parts, "interactive", charge=charge)
    except (NoCredits, FreeTierRefused) as exc:
        return charging.refusal(exc)
    count_upload("form", job.upload_bytes)
    target = url_for("pages.job_page", job_id=job.id)
    if wants_json():
        return jsonify(job=job.id, url=target), 201
    return redirect(target, 303)


@pages.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = _job(job_id)
    view = public_view(job)
    # the preview reads an STL, or a multi-segment job's 3MF or zip of STLs: its segments'
    # names and colours, in their order
    segments = (view.get("report") or {}).get("segments") or []
    page = render_template("job.html", job=view, stages=STAGES,
                           preview=current_app.config["PREVIEW_AVAILABLE"],
                           previewable=current_app.config["PREVIEW_AVAILABLE"] and (
                               job.options.get("format", "stl") != "3mf"
                               or bool(job.options.get("segments"))),
                           awaits_level=jobs.awaits_level(job), limits=LIMITS,
                           segment_colors=[[s["name"], s["color"]] for s in segments])
    return no_store(current_app.make_response(page)) if jobs.awaits_level(job) else page


@pages.get("/jobs/<job_id>/status")
def job_status(job_id: str):
    return jsonify(public_view(_job(job_id)))


@pages.post("/jobs/<job_id>/series")
def choose(job_id: str):
    _job(job_id)
    try:
        jobs.choose_series(_settings(), job_id, browser_owner(),
                           request.form.get("series", ""))
    except jobs.JobConflict as exc:
        abort(409, str(exc))
    return redirect(url_for("pages.job_page", job_id=job_id), 303)


@pages.get("/jobs/<job_id>/preview")
def threshold_preview(job_id: str):
    """The threshold preview's JSON (histogram, levels, slices with their URLs)."""
    return preview_json(_settings(), _job(job_id), lambda plane: url_for(
        "pages.threshold_slice", job_id=job_id, plane=plane))


@pages.get("/jobs/<job_id>/preview/<plane>.png")
def threshold_slice(job_id: str, plane: str):
    return preview_png(_settings(), _job(job_id), plane)


@pages.post("/jobs/<job_id>/level")
def choose_level(job_id: str):
    """"Convert at this level": queue the job again with the level from the form."""
    _job(job_id)
    try:
        level = float(request.form.get("level", ""))
        jobs.choose_level(_settings(), job_id, browser_owner(), level)
    except ValueError:
        return answer(400, "the level must be a number (HU for CT, stored units for MR)")
    except ConversionError as exc:
        return answer(400, str(exc))
    except jobs.JobConflict as exc:
        abort(409, str(exc))
    return redirect(url_for("pages.job_page", job_id=job_id), 303)


@pages.get("/jobs/<job_id>/download")
def download(job_id: str):
    job = _job(job_id)
    return send_result(_settings(), job, as_attachment=request.args.get("inline") != "1")


@pages.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    _job(job_id)
    jobs.delete_job(_settings(), job_id, browser_owner())
    return redirect(url_for("pages.job_page", job_id=job_id), 303)
