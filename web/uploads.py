"""Uploads stream to disk as they arrive, never whole in memory.

Each uploaded file goes straight into a temporary file in the data folder's ``incoming/``
(the same file system as the jobs, so keeping it is a rename). Files a request did not hand
to a job are deleted when the request ends, and the scheduler deletes any left by a crash.
A multipart body that is malformed or cut short is a clear 400, not an empty upload; a body
that is not an upload (JSON, a form) may hold ``MAX_BODY_BYTES`` at most (413), since it is
read into memory.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Request, current_app, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestTimeout
from werkzeug.formparser import FormDataParser

from dicomstl.errors import ConversionError
from web.server import ReceiveTimeout

#: The largest body of a request that is not a multipart upload (JSON, forms), bytes: the
#: API's JSON bodies are a few hundred bytes; Stripe's events a few tens of KiB.
MAX_BODY_BYTES = 1024**2
MULTIPART = "multipart/form-data"
TRUNCATED = ("the upload is incomplete or malformed (its multipart body ended early or is "
             "not valid multipart/form-data); send it again")


class UploadError(ConversionError):
    """The upload itself is unusable (no files)."""


class _HashedPart:
    """An upload part's temporary file that hashes (SHA-256) what is written to it."""

    def __init__(self, file):
        self._file = file
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


class UploadRequest(Request):
    """A request whose file parts are written to ``incoming/`` while they arrive, hashed on
    the way (``file_digests``)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        settings = current_app.config["SETTINGS"]
        part = _HashedPart(tempfile.NamedTemporaryFile(  # noqa: SIM115
            "wb+", dir=settings.incoming_dir, prefix="part-", delete=False))
        self.__dict__.setdefault("upload_parts", []).append(Path(part.name))
        self.__dict__.setdefault("upload_hashes", {})[Path(part.name)] = part.sha256
        return part

    @property
    def max_content_length(self) -> int | None:
        """The app's upload limit for multipart bodies, ``MAX_BODY_BYTES`` for any other."""
        limit = super().max_content_length
        if self._max_content_length is not None or self.mimetype == MULTIPART:
            return limit
        return MAX_BODY_BYTES if limit is None else min(limit, MAX_BODY_BYTES)

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.silent = False  # a broken body is reported (below), not read as an empty form
        return parser

    def _load_form_data(self) -> None:
        try:
            with _slow_body_answers_408(self.mimetype):
                super()._load_form_data()
        except ValueError:
            raise BadRequest(TRUNCATED) from None

    def get_data(self, *args, **kwargs):
        with _slow_body_answers_408(self.mimetype):
            return super().get_data(*args, **kwargs)


@contextmanager
def _slow_body_answers_408(mimetype: str) -> Iterator[None]:
    """A body the server cut for arriving too slowly (``ReceiveTimeout``) becomes a 408.

    werkzeug's input stream turns the server's error into ``ClientDisconnected`` (a 400),
    so the cause is looked for along the chain.
    """
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ReceiveTimeout):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        s = current_app.config["SETTINGS"]
        rate = s.web_body_min_rate
        rate_text = f"{rate // 1024} KiB/s" if rate % 1024 == 0 else f"{rate} bytes/s"
        what = "upload" if mimetype == "multipart/form-data" else "request"
        raise RequestTimeout(
            f"the {what} arrived too slowly (under {rate_text}, or a pause of "
            f"{s.web_body_timeout_s:g} s); check the connection and try again") from None


def take_files(field: str = "files") -> list[Path]:
    """The request's uploaded files in ``field``, closed and ready to move; empty parts dropped."""
    if request.mimetype != MULTIPART:
        raise UploadError("send the upload as multipart/form-data (the files in the field "
                          f"{field!r}), not {request.mimetype or 'a body without a type'}")
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


def file_digests(parts: list[Path]) -> list[str]:
    """The SHA-256 (hex) of each of this request's upload parts, hashed as they arrived."""
    hashes = request.__dict__.get("upload_hashes", {})
    return [hashes[part].hexdigest() for part in parts]


def discard_unclaimed(_exc: BaseException | None = None) -> None:
    """Delete this request's upload parts that no job took (teardown handler)."""
    for part in request.__dict__.get("upload_parts", []):
        part.unlink(missing_ok=True)
