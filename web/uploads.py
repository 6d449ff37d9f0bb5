"""Uploads stream to disk as they arrive, never whole in memory.

Each uploaded file goes straight into a temporary file in the data folder's ``incoming/``
(the same file system as the jobs, so keeping it is a rename). Files a request did not hand
to a job are deleted when the request ends, and the scheduler deletes any left by a crash.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Request, current_app, request
from werkzeug.datastructures import FileStorage

from dicomstl.errors import ConversionError


class UploadError(ConversionError):
    """The upload itself is unusable (no files)."""


class UploadRequest(Request):
    """A request whose file parts are written to ``incoming/`` while they arrive."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        settings = current_app.config["SETTINGS"]
        part = tempfile.NamedTemporaryFile("wb+", dir=settings.incoming_dir, prefix="part-",  # noqa: SIM115
                                           delete=False)
        self.__dict__.setdefault("upload_parts", []).append(Path(part.name))
        return part


def take_files(field: str = "files") -> list[Path]:
    """The request's uploaded files in ``field``, closed and ready to move; empty parts dropped."""
    parts = []
    for item in request.files.getlist(field):
        item: FileStorage
        stream = item.stream
        stream.flush()
        path = Path(getattr(stream, "name", ""))
        stream.close()
        if path.is_file() and path.stat().st_size > 0:
            parts.append(path)
    if not parts:
        raise UploadError("the upload holds no files; choose a folder, DICOM files or a .zip")
    return parts


def discard_unclaimed(_exc: BaseException | None = None) -> None:
    """Delete this request's upload parts that no job took (teardown handler)."""
    for part in request.__dict__.get("upload_parts", []):
        part.unlink(missing_ok=True)
