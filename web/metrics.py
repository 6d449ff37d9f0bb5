"""The web app's metrics: request latency by route, responses by status class, upload bytes.

Routes are Flask's URL rules (``/api/v1/jobs/<job_id>``), so no job id reaches a label.
Under gunicorn the processes' metrics are added up (``dicomstl.metrics``).
"""

from __future__ import annotations

import time

from flask import Flask, g, request
from prometheus_client import Counter, Histogram

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
    """Time every request and count its answer by route and status class."""

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
        return response
