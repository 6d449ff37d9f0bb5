"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from functools import cache

from dicomstl import __version__
from dicomstl import retention_policy as policy
from dicomstl.db import STATES
from dicomstl.options import (
    FORMATS,
    LIMITS,
    MAX_KEEP,
    MAX_SEGMENTS,
    OPTION_TYPES,
    PRESETS,
    SEGMENT_NAME,
    STAGES,
)
from dicomstl.settings import Settings


def _nullable(kind: str, **extra) -> dict:
    return {"type": [kind, "null"], **extra}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def _job_response(description: str, links: bool = True) -> dict:
    """A Job answer; with ``links``, the OpenAPI links from it to every operation on the job
    (clients and schemathesis' stateful tests follow them)."""
    answer = {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Job"}}}}
    if links:
        answer["links"] = JOB_LINKS
    return answer


#: What can be done with a job once its id is known (``$response.body#/id``).
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"},
           "description": description}
    for name, operation, description in (
        ("GetJob", "getJob", "follow the job's state"),
        ("GetResult", "getResult", "download the model once it is done"),
        ("DeleteJob", "deleteJob", "delete the job's files now"),
        ("ChooseSeries", "chooseSeries", "pick a series when several were found"),
        ("GetPreview", "getPreview", "the threshold preview, for a preview job"),
        ("GetPreviewSlice", "getPreviewSlice", "a slice of the threshold preview"),
        ("ChooseLevel", "chooseLevel", "convert a previewed job at a level"))}


#: The health routes are served from the site's root, not under /api/v1.
ROOT_SERVER = [{"url": "/"}]
NO_STORE = {"Cache-Control": {"schema": {"type": "string", "const": "no-store"}}}
READINESS = {"type": "object", "required": ["database", "redis"], "properties": {
    "database": {"type": "string", "enum": ["ok", "unavailable"]},
    "redis": {"type": "string", "enum": ["ok", "unavailable"]},
    "error": {"type": "string", "description": "what is not ready, in words (no URLs)"}}}

JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
PLANE = {"name": "plane", "in": "path", "required": True,
         "schema": {"type": "string", "enum": ["axial", "coronal", "sagittal"]}}


def _no_store_error(description: str) -> dict:
    return {**_error(description), "headers": NO_STORE}


#: 402: what the credits lack (``web/charging.py``).
PAYMENT_NEEDED = {
    "type": "object", "required": ["error", "pricing_url"], "properties": {
        "error": {"type": "string"},
        "balance": {"type": "integer", "description": "the organisation's credits now"},
        "needed": {"type": "integer", "description": "credits this upload costs"},
        "pricing_url": {"type": "string"}}}
ACCOUNT = {
    "type": "object", "required": ["credits", "plan"], "properties": {
        "organisation": {"type": "string"}, "credits": {"type": "integer"},
        "plan": {"type": "string", "enum": ["free", "clinic"]},
        "plan_status": _nullable("string"),
        "credit_upload_bytes": {"type": "integer",
                                "description": "one credit per upload up to this size, one "
                                               "more per further block"},
        "pricing_url": {"type": "string"}}}

#: The threshold preview (``gpu_worker/preview.py`` makes it; ``web/previews.py`` sends it).
PREVIEW = {
    "type": "object",
    "required": ["series", "units", "histogram", "levels", "default_level", "window", "slices"],
    "properties": {
        "series": {"type": "string", "description": "the previewed series' uid"},
        "modality": {"type": "string"},
        "units": {"type": "string", "enum": ["HU", "stored"]},
        "volume_shape_kji": {"type": "array", "items": {"type": "integer"}},
        "histogram": {"type": "object", "required": ["edges", "counts"], "properties": {
            "edges": {"type": "array", "items": {"type": "number"},
                      "description": "bin edges (one more than counts), in the units"},
            "counts": {"type": "array", "items": {"type": "integer"},
                       "description": "voxels per bin [edge, next edge)"}}},
        "levels": {"type": "array", "description": "the presets (CT only: they are in HU)",
                   "items": {"type": "object", "properties": {
                       "name": {"type": "string"}, "level": {"type": "number"},
                       "invert": {"type": "boolean"}}}},
        "default_level": {"type": "number",
                          "description": "the level used without a preset or level"},
        "window": {"type": "array", "items": {"type": "number"},
                   "description": "the values shown black and white in the PNGs"},
        "centre_lps_mm": {"type": "array", "items": {"type": "number"}},
        "slices": {"type": "array", "items": {"type": "object", "properties": {
            "plane": {"type": "string"}, "url": {"type": "string"},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "pixel_mm": {"type": "number"},
            "right_lps": {"type": "array", "items": {"type": "number"},
                          "description": "the LPS direction of the image's +x (right)"},
            "down_lps": {"type": "array", "items": {"type": "number"},
                         "description": "the LPS direction of the image's +y (down)"},
            "values": {"type": "object", "description": "the raw values on a grid of at "
                       "most 256 per side covering the same area (base64, little-endian "
                       "dtype), to overlay value >= level"}}}},
    },
}


TOO_MANY = {"description": "over a rate limit (per key): wait Retry-After seconds",
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _with_rate_limits(document: dict) -> dict:
    """Every keyed operation may answer 429 (``web.security``)."""
    for path in document["paths"].values():
        for method, operation in path.items():
            if method in ("get", "post", "delete") and operation.get("security") != []:
                operation["responses"].setdefault("429", TOO_MANY)
    return document


@cache
def spec(settings: Settings) -> dict:
    """The document for one server's settings (its retention promise)."""
    return _with_rate_limits(_document(settings))


def _document(settings: Settings) -> dict:
    options = {name: {"type": kind} for name, (kind, _types) in OPTION_TYPES.items()}
    for name, (low, high, unit) in LIMITS.items():
        if name in options:
            options[name].update(minimum=low, maximum=high, **({"description": unit}
                                                                if unit else {}))
    options["decimate"]["exclusiveMaximum"] = options["decimate"].pop("maximum")
    options["preset"]["enum"] = list(PRESETS)
    options["format"]["enum"] = list(FORMATS)
    options["preview"]["description"] = ("stop after the threshold preview (GET "
                                         "/jobs/{id}/preview) until a level is chosen "
                                         "(POST /jobs/{id}/level)")
    options["keep"].update(pattern=r"^(all|largest|[1-9][0-9]{0,3}|10000)$",  # 1…MAX_KEEP
                           description=f"all, largest, or the N largest parts (N ≤ {MAX_KEEP})")
    level_low, level_high, level_unit = LIMITS["level"]
    level = {"type": "number", "minimum": level_low, "maximum": level_high,
             "description": level_unit}
    options["segments"].update(
        maxItems=MAX_SEGMENTS, description=(
            "several models in one job, instead of preset/level: each a mesh of its own "
            "(a preset, a level, or the band level <= value < level2), with a different "
            "name each; written as one named, coloured object each in a 3MF, or one STL "
            "each in a zip (format stl or stl-ascii)"),
        items={"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {
                   "name": {"type": "string", "pattern": f"^{SEGMENT_NAME.pattern}$"},
                   "preset": {"type": "string", "enum": list(PRESETS)},
                   "level": level, "level2": level,
                   "color": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}}})
    job = {
        "type": "object",
        "required": ["id", "state", "options", "created_at", "delete_after", "stages",
                     "stages_done", "progress", "attempts", "links"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
            "queue": {"type": "string"},
            "options": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"},
            "queued_at": _nullable("string", format="date-time"),
            "started_at": _nullable("string", format="date-time"),
            "finished_at": _nullable("string", format="date-time"),
            "deleted_at": _nullable("string", format="date-time"),
            "delete_after": {"type": "string", "format": "date-time",
                             "description": "when the job's files are deleted at the latest"},
            "attempts": {"type": "integer"},
            "stage": _nullable("string", description="the stage running now"),
            "stages": {"type": "array", "items": {"type": "string", "enum": list(STAGES)}},
            "stages_done": {"type": "array", "items": {"type": "string"}},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "message": _nullable("string", description="why it failed, in words for users"),
            "choices": {"type": ["array", "null"], "items": {"type": "object"},
                        "description": "series to pick from (state uploaded)"},
            "report": {"type": ["object", "null"],
                       "description": "mesh report (triangles, area mm², volume cm³, "
                                      "bbox) and printability (walls mm, shells, voids "
                                      "mm³, printer bed fit, material cm³ and g)"},
            "upload": {"type": "object"},
            "result_bytes": _nullable("integer"),
            "credits": {"type": "integer", "minimum": 0,
                        "description": "credits the job took (given back if it ends without "
                                       "a model)"},
            "links": {"type": "object"},
        },
    }
    bearer = [{"apiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicomstl API", "version": __version__,
                 "description": "Submit DICOM series, follow the conversion, download the "
                                "model (millimetres, patient LPS coordinates). "
                                + policy.summary(settings)},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Options": {"type": "object", "additionalProperties": False,
                            "properties": options},
                "Job": job,
                "Readiness": READINESS,
                "Preview": PREVIEW,
                "PaymentNeeded": PAYMENT_NEEDED,
                "Account": ACCOUNT,
            },
        },
        "security": bearer,
        "paths": {
            "/openapi.json": {"get": {
                "operationId": "openapi", "security": [],
                "summary": "This document (no key needed)",
                "responses": {"200": {"description": "this document",
                                      "content": {"application/json": {}}}}}},
            "/healthz": {
                "servers": ROOT_SERVER,
                "get": {
                    "operationId": "liveness", "security": [], "tags": ["health"],
                    "summary": "Liveness: the web process answers (checks nothing else)",
                    "responses": {"200": {
                        "description": "alive", "headers": NO_STORE,
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["ok", "version"],
                            "properties": {"ok": {"const": True},
                                           "version": {"type": "string"}}}}}}}}},
            "/readyz": {
                "servers": ROOT_SERVER,
                "get": {
                    "operationId": "readiness", "security": [], "tags": ["health"],
                    "summary": "Readiness: the database answers SELECT 1 and Redis answers "
                               "PING, each within 2 s",
                    "responses": {
                        "200": {"description": "ready", "headers": NO_STORE,
                                "content": {"application/json": {"schema": {
                                    "$ref": "#/components/schemas/Readiness"}}}},
                        "503": {"description": "not ready: which check failed, and why",
                                "headers": {**NO_STORE, "Retry-After": {
                                    "schema": {"type": "string"}}},
                                "content": {"application/json": {"schema": {
                                    "allOf": [{"$ref": "#/components/schemas/Readiness"},
                                              {"required": ["error"]}]}}}}}}},
            "/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Upload a series and queue its conversion",
                    "description": "Multipart fields: files (DICOM files or one .zip), "
                                   "options (a JSON object, see Options), callback_url "
                                   "(https; the signed job is POSTed there when it ends). "
                                   "An Idempotency-Key header makes retries safe.",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "schema": {"type": "string", "maxLength": 200}}],
                    "requestBody": {"required": True, "content": {"multipart/form-data": {
                        "schema": {"type": "object", "required": ["files"], "properties": {
                            "files": {"type": "array", "minItems": 1,
                                      "items": {"type": "string", "format": "binary"}},
                            "options": {"type": "string",
                                        "description": "JSON object; see Options"},
                            "callback_url": {
                                "type": "string", "format": "uri", "maxLength": 2000,
                                "description": "https, to a public host (internal addresses "
                                               "are refused); see /api"}}}}}},
                    "responses": {"201": _job_response("queued"),
                                  "200": _job_response("the job made earlier with this "
                                                       "Idempotency-Key"),
                                  "400": _error("bad options (see Options for the ranges), "
                                                "a refused callback_url, or no files"),
                                  "401": _error("no valid API key"),
                                  "413": _error("upload too large"),
                                  "402": {"description": "the organisation's credits "
                                                         "do not cover the upload, or its "
                                                         "clinic plan is not running",
                                          "content": {"application/json": {"schema": {
                                              "$ref": "#/components/schemas/PaymentNeeded"}}}},
                                  "422": _error("Idempotency-Key used before for a "
                                                "different request"),
                                  "503": _error("the queue is unreachable; nothing was "
                                                "stored: retry later (Retry-After)")}},
                "get": {
                    "operationId": "listJobs",
                    "summary": "This key's jobs, newest first",
                    "parameters": [
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "offset", "in": "query",
                         "schema": {"type": "integer", "minimum": 0,
                                    "maximum": 10**9}}],
                    "responses": {
                        "200": {"description": "a page of jobs, newest first",
                                "content": {"application/json": {"schema": {
                                    "type": "object",
                                    "required": ["jobs", "total", "limit", "offset"],
                                    "properties": {
                                        "jobs": {"type": "array", "items": {
                                            "$ref": "#/components/schemas/Job"}},
                                        "total": {"type": "integer"},
                                        "limit": {"type": "integer"},
                                        "offset": {"type": "integer"},
                                        "next_offset": _nullable("integer")}}}}},
                        "400": _error("bad paging"), "401": _error("no valid API key")}},
            },
            "/jobs/{job_id}": {
                "parameters": [JOB_ID],
                "get": {"operationId": "getJob", "summary": "A job: state, stages, report",
                        "responses": {"200": _job_response("the job"),
                                      "401": _error("no valid API key"),
                                      "404": _error("no such job for this key")}},
                "delete": {"operationId": "deleteJob",
                           "summary": "Delete a job's files now (a running one stops)",
                           "responses": {"200": _job_response("deleted now"),
                                         "401": _error("no valid API key"),
                                         "404": _error("no such job for this key")}},
            },
            "/jobs/{job_id}/result": {
                "parameters": [JOB_ID],
                "get": {"operationId": "getResult", "summary": "Download the model",
                        "responses": {
                            "200": {"description": "the model (with segments: a 3MF of "
                                                   "one object each, or a zip of one STL "
                                                   "each)",
                                    "content": {"model/stl": {}, "model/3mf": {},
                                                "application/zip": {}}},
                            "401": _error("no valid API key"),
                            "404": _error("no such job for this key"),
                            "409": _error("not done yet"),
                            "410": _error("deleted")}},
            },
            "/jobs/{job_id}/series": {
                "parameters": [JOB_ID],
                "post": {"operationId": "chooseSeries",
                         "summary": "Pick the series to convert when the upload held several",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object", "required": ["series"],
                                        "properties": {"series": {"type": "string"}}}}}},
                         "responses": {"200": _job_response("queued with that series"),
                                       "400": _error("no series given"),
                                       "401": _error("no valid API key"),
                                       "404": _error("no such job for this key"),
                                       "409": _error("not waiting for a choice")}},
            },
            "/jobs/{job_id}/preview": {
                "parameters": [JOB_ID],
                "get": {"operationId": "getPreview",
                        "summary": "The threshold preview: histogram, preset levels, slices",
                        "description": "For a job submitted with the option preview, once "
                                       "its state is uploaded. Slice images are patient "
                                       "data: never cached, deleted with the upload.",
                        "responses": {
                            "200": {"description": "the preview", "headers": NO_STORE,
                                    "content": {"application/json": {"schema": {
                                        "$ref": "#/components/schemas/Preview"}}}},
                            "401": _error("no valid API key"),
                            "404": _no_store_error("no such job, or it has no preview"),
                            "409": _no_store_error("the preview is not ready yet")}},
            },
            "/jobs/{job_id}/preview/{plane}.png": {
                "parameters": [JOB_ID, PLANE],
                "get": {"operationId": "getPreviewSlice",
                        "summary": "A slice of the preview (axial, coronal or sagittal) as "
                                   "an 8-bit greyscale PNG",
                        "responses": {
                            "200": {"description": "the slice", "headers": NO_STORE,
                                    "content": {"image/png": {}}},
                            "401": _error("no valid API key"),
                            "404": _no_store_error("no such job, plane or preview"),
                            "409": _no_store_error("the preview is not ready yet")}},
            },
            "/account": {
                "get": {"operationId": "getAccount",
                        "summary": "The key's organisation: credits and plan",
                        "responses": {
                            "200": {"description": "the organisation",
                                    "content": {"application/json": {"schema": {
                                        "$ref": "#/components/schemas/Account"}}}},
                            "401": _error("no valid API key"),
                            "404": _error("an operator's key: it belongs to no account")}}},
            "/account/export": {
                "get": {"operationId": "exportAccount",
                        "summary": "Everything held about the account (a logged-in browser) "
                                   "or the key's organisation, as JSON",
                        "responses": {
                            "200": {"description": "the export (a download)",
                                    "content": {"application/json": {"schema": {
                                        "type": "object",
                                        "required": ["exported_at", "organisation", "jobs",
                                                     "credit_ledger", "payments",
                                                     "retention"]}}}},
                            "401": _error("no valid API key or login"),
                            "404": _error("an operator's key: it belongs to no account")}}},
            "/jobs/{job_id}/level": {
                "parameters": [JOB_ID],
                "post": {"operationId": "chooseLevel",
                         "summary": "Convert a previewed job at this level",
                         "description": "HU for CT, stored units for MR; replaces the "
                                        "job's preset or level.",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object", "required": ["level"],
                                        "properties": {"level": {
                                            "type": "number", "minimum": LIMITS["level"][0],
                                            "maximum": LIMITS["level"][1]}}}}}},
                         "responses": {"200": _job_response("queued at that level"),
                                       "400": _error("no level, or out of range"),
                                       "401": _error("no valid API key"),
                                       "404": _error("no such job for this key"),
                                       "409": _error("not waiting for a level")}},
            },
        },
    }
