"""A small client for the bulk API, as a clinic would use it (``dicomstl submit`` uses it).

Folders and lists of files are packed into one uncompressed zip with numbered member names
(file names can hold patient data), streamed from disk with a progress callback. Submissions
carry an ``Idempotency-Key``, so a retry after a dropped connection never makes two jobs; a
rate limit (429) or a server without its queue (503) is retried after its ``Retry-After``,
a refusal for credits (402) is not.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import requests
from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor

ENDED = ("done", "failed", "deleted")


class ApiError(Exception):
    """The API answered with an error; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None):
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.retry_after_s = retry_after_s  # the server's Retry-After, when it sent one


def pack(paths: Sequence[str | Path], folder: Path) -> Path:
    """One .zip to upload: a single given .zip as it is, else every file, stored uncompressed."""
    items = [Path(p) for p in paths]
    if len(items) == 1 and items[0].is_file() and zipfile.is_zipfile(items[0]):
        return items[0]
    files = []
    for item in items:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"not found: {item}")
    if not files:
        raise FileNotFoundError("no files to upload in " + ", ".join(map(str, items)))
    target = folder / "upload.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for n, path in enumerate(files):
            archive.write(path, f"{n:06d}.dcm")
    return target


class Client:
    """The API at ``base_url`` (e.g. ``http://127.0.0.1:8000``) with one API key."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 60.0):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout_s

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, self.base + path, timeout=self.timeout,
                                         **kwargs)
        except requests.ConnectionError as exc:
            raise ApiError(0, f"cannot reach {self.base}: {exc.__class__.__name__}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.reason
            retry = response.headers.get("Retry-After", "")
            raise ApiError(response.status_code, message,
                           float(retry) if retry.isdigit() else None)
        return response

    def submit(self, paths: Sequence[str | Path], options: dict | None = None,
               callback_url: str | None = None, idempotency_key: str | None = None,
               progress: Callable[[int, int], None] | None = None, attempts: int = 3) -> dict:
        """Upload a series (folder, files or a .zip) and queue it; returns the job."""
        key = idempotency_key or str(uuid.uuid4())
        with tempfile.TemporaryDirectory(prefix="dicomstl-") as tmp:
            archive = pack(paths, Path(tmp))
            for attempt in range(attempts):
                with archive.open("rb") as fh:
                    fields: list = [("options", json.dumps(options or {})),
                                    ("files", ("upload.zip", fh, "application/zip"))]
                    if callback_url:
                        fields.append(("callback_url", callback_url))
                    encoder = MultipartEncoder(fields)
                    body = MultipartEncoderMonitor(encoder, (lambda m: progress(
                        m.bytes_read, m.len)) if progress else None)
                    try:
                        return self._call("POST", "/jobs", data=body, headers={
                            "Content-Type": body.content_type, "Idempotency-Key": key}).json()
                    except ApiError as exc:
                        if exc.status not in (0, 429, 502, 503, 504) or \
                                attempt == attempts - 1:
                            raise  # 402 (credits), 4xx: retrying would not help
                        wait = exc.retry_after_s
                time.sleep(min(wait or 2**attempt, 120))
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}").json()

    def jobs(self, limit: int = 50, offset: int = 0) -> dict:
        return self._call("GET", "/jobs", params={"limit": limit, "offset": offset}).json()

    def choose_series(self, job_id: str, uid: str) -> dict:
        return self._call("POST", f"/jobs/{job_id}/series", json={"series": uid}).json()

    def wait(self, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None,
             on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job ends (or waits for a series choice); returns it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in ENDED or job.get("choices"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id[:8]} is still {job['state']}")
            time.sleep(poll_s)

    def download(self, job_id: str, target: str | Path) -> Path:
        """Save the model of a done job to ``target`` (streamed); returns the path."""
        target = Path(target)
        response = self._call("GET", f"/jobs/{job_id}/result", stream=True)
        part = target.with_name(target.name + ".part")
        with part.open("wb") as fh:
            for chunk in response.iter_content(1 << 20):
                fh.write(chunk)
        part.replace(target)
        return target

    def delete(self, job_id: str) -> dict:
        return self._call("DELETE", f"/jobs/{job_id}").json()
