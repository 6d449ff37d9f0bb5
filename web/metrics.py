"""The web app's metrics and IP log: request latency by route, responses by status class,
upload bytes; one IP log row per upload and API call.

Routes are Flask's URL rules (``/api/v1/jobs/<job_id>``), so no job id reaches a label.
Under gunicorn the processes' metrics are added up (``dicomstl.metrics``).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import SQLAlchemyError

from dicomstl import iplog

log = logging.getLogger(__name__)

REQUEST_SECONDS = Histogram(
    "dicomstl_http_request_duration_seconds", "Time to answer a request, by route",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
RESPONSES = Counter("dicomstl_http_responses_total", "Responses by route and status class",
                    ["route", "status_class"])
UPLOAD_BYTES = Counter("dicomstl_upload_bytes_total", "Bytes of uploads stored as jobs",
                       ["source"])
UPLOADS = Counter("dicomstl_uploads_total", "Uploads stored as jobs", ["source"])
for _source in ("form", "api"):
    UPLOAD_BYTES.labels(_source)
    UPLOADS.labels(_source)

UNMATCHED = "(unmatched)"


def count_upload(source: str, n_bytes: int) -> None:
    UPLOADS.labels(source).inc()
    UPLOAD_BYTES.labels(source).inc(n_bytes)


def instrument(app: Flask) -> None:
    """Time every request and log uploads and API calls by IP."""
    from web.api import PUBLIC  # (web.api counts uploads here)

    def ip_log_kind() -> str | None:
        if request.endpoint == "pages.upload":
            return "upload"
        if request.blueprint == "api" and request.endpoint not in PUBLIC:
            return "api"
        return None

    @app.before_request
    def _start() -> None:
        g.metrics_start = time.perf_counter()

    @app.after_request
    def _observe(response):
        route = request.url_rule.rule if request.url_rule else UNMATCHED
        start = g.get("metrics_start")
        if start is not None:
            REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - start)
        RESPONSES.labels(route, f"{response.status_code // 100}xx").inc()
        kind = ip_log_kind()
        if kind:
            try:
                iplog.record(app.config["SETTINGS"].database_url, request.remote_addr or "",
                             kind, route)
            except SQLAlchemyError:
                log.warning("could not write the IP log row for %s", route)
        return response
