"""Where a job's files live, and how they are deleted.

``<data_dir>/jobs/<job id>/upload/`` holds the upload under numbered names (a user's file
names can carry patient data, so they are never kept); ``preview/`` the threshold preview
(slice images of the upload: patient data too, so it lives and dies with the upload, under
fixed names); ``result/`` holds the model, named only by the job id. Nothing else of a job
is on disk. ``<data_dir>/mail/`` holds copies of e-mails when no SMTP server is set.
Everything is owner-only: folders 0700, files 0600 (the service's processes also run with
umask 077, ``private_umask``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from dicomstl.settings import Settings


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def upload_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "upload"


def preview_dir(settings: Settings, job_id: str) -> Path:
    """The threshold preview (``preview.json``, ``axial.png``, ``coronal.png``,
    ``sagittal.png``): deleted with the upload."""
    return job_dir(settings, job_id) / "preview"


def result_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "result"


def result_name(job_id: str, fmt: str) -> str:
    """The model's file name for a format (``stl``, ``stl-ascii``, ``3mf``, or ``zip``: one STL
    per segment): the job id's first characters, never patient data."""
    return f"dicomstl-{job_id[:12]}.{fmt if fmt in ('3mf', 'zip') else 'stl'}"


def result_path(settings: Settings, job_id: str, fmt: str) -> Path:
    return result_dir(settings, job_id) / result_name(job_id, fmt)


#: Folders and files of uploads and models: readable by the service's user only.
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_umask() -> None:
    """Make every file this process creates from now on owner-only (umask 077)."""
    os.umask(0o077)


def make_private_dir(path: Path) -> Path:
    """``path`` and any missing parents, owner-only (whatever the umask)."""
    if not path.is_dir():
        make_private_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=PRIVATE_DIR)
        path.chmod(PRIVATE_DIR)  # the mode given to mkdir is masked by the umask
    return path


def store_upload(settings: Settings, job_id: str, parts: list[Path]) -> tuple[int, int]:
    """Move streamed upload parts into the job's folder (owner-only); (files, bytes)."""
    folder = make_private_dir(upload_dir(settings, job_id))
    total = 0
    for n, part in enumerate(parts):
        total += part.stat().st_size
        target = folder / f"{n:06d}.part"
        os.replace(part, target)
        target.chmod(PRIVATE_FILE)
    return len(parts), total


def make_result_dir(settings: Settings, job_id: str) -> Path:
    """The job's (owner-only) result folder, made if missing."""
    return make_private_dir(result_dir(settings, job_id))


def delete_upload(settings: Settings, job_id: str) -> None:
    """Remove the raw upload and the preview made from it."""
    shutil.rmtree(upload_dir(settings, job_id), ignore_errors=True)
    shutil.rmtree(preview_dir(settings, job_id), ignore_errors=True)


def delete_job_files(settings: Settings, job_id: str) -> None:
    """Remove everything a job has on disk."""
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)


def incoming_parts(settings: Settings) -> list[tuple[Path, float]]:
    """The upload parts still arriving, with their modification times (Unix seconds)."""
    parts = []
    for part in settings.incoming_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a request just claimed it
            parts.append((part, part.stat().st_mtime))
    return parts


def sweep_incoming(settings: Settings, max_age_s: float, now: float | None = None) -> int:
    """Delete parts of uploads that never finished arriving, older than ``max_age_s`` at
    ``now`` (Unix seconds; default: the clock)."""
    cutoff = (time.time() if now is None else now) - max_age_s
    stale = [part for part, mtime in incoming_parts(settings) if mtime < cutoff]
    for part in stale:
        part.unlink(missing_ok=True)
    return len(stale)


def mail_files(settings: Settings) -> list[tuple[Path, float]]:
    """Copies of sent e-mails in the mail folder, with their modification times."""
    if not settings.mail_dir.is_dir():
        return []
    found = []
    for path in settings.mail_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.append((path, path.stat().st_mtime))
    return found


def sweep_mail(settings: Settings, now: float | None = None) -> int:
    """Delete copies of e-mails older than ``mail_keep_s`` at ``now`` (Unix seconds)."""
    cutoff = (time.time() if now is None else now) - settings.mail_keep_s
    stale = [path for path, mtime in mail_files(settings) if mtime < cutoff]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
