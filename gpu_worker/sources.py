"""Input files: a folder (searched recursively), a list of files, or a .zip archive.

Archives are read in memory, member by member, and never extracted to disk, so an entry named
``../../x`` cannot escape; such entries are still refused, because they mark a crafted archive.
Sizes and compression ratios are checked before anything is inflated (zip bombs).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dicomstl.errors import ArchiveError, NoImagesError

#: Largest total uncompressed size of an archive, bytes.
MAX_ARCHIVE_BYTES = 4 * 1024**3
#: Largest ratio of uncompressed to compressed size, per member and overall. DICOM pixel data
#: compress about 2-10 times with deflate; 1000-fold ratios are made on purpose.
MAX_COMPRESSION_RATIO = 100.0


@dataclass(frozen=True)
class Source:
    """One input file: a path on disk, or the bytes of an archive member."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> str | io.BytesIO:
        """What pydicom's ``dcmread`` takes: a path, or a fresh buffer over the bytes."""
        if self.path is not None:
            return str(self.path)
        return io.BytesIO(self.data or b"")


def collect_sources(inputs: Iterable[str | os.PathLike]) -> list[Source]:
    """Every file under the given folders, files and .zip archives, in a stable order."""
    sources: list[Source] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                sources.extend(_file_sources(sub))
        elif path.is_file():
            sources.extend(_file_sources(path))
        else:
            raise NoImagesError(f"input not found: {path.name or item}")
    if not sources:
        raise NoImagesError("the input holds no files")
    return sources


def _file_sources(path: Path) -> list[Source]:
    if path.suffix.lower() == ".zip" or _looks_like_zip(path):
        return list(read_zip(path))
    return [Source(name=path.name, path=path)]


def _looks_like_zip(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    # A DICOM file has a 128-byte preamble; only a bare zip starts with the local-file magic.
    return head[:4] == b"PK\x03\x04" and head[128:132] != b"DICM"


def read_zip(path: Path, max_bytes: int = MAX_ARCHIVE_BYTES,
             max_ratio: float = MAX_COMPRESSION_RATIO) -> Iterator[Source]:
    """The members of a zip archive as in-memory sources, after checking it is safe.

    Raises ArchiveError for an unreadable archive, an entry whose name leaves the archive's own
    folder, or sizes or ratios over the limits (checked from the directory, then enforced again
    while inflating, since a directory can lie).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError("the archive is not a readable zip file") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = 0
        total_compressed = 0
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or ":" in m.filename:
                raise ArchiveError("the archive contains an entry with an unsafe path "
                                   "(absolute or leading outside the archive); refused")
            total += m.file_size
            total_compressed += m.compress_size
            if m.compress_size and m.file_size / m.compress_size > max_ratio:
                raise ArchiveError(
                    f"the archive is compressed over {max_ratio:.0f} times "
                    "(a zip bomb?); refused before unpacking")
        if total > max_bytes:
            raise ArchiveError(f"the archive unpacks to {total / 1024**3:.1f} GiB, over the "
                               f"limit of {max_bytes / 1024**3:.1f} GiB")
        if total_compressed and total / total_compressed > max_ratio:
            raise ArchiveError(f"the archive is compressed over {max_ratio:.0f} times "
                               "(a zip bomb?); refused before unpacking")
        for m in members:
            yield Source(name=PurePosixPath(m.filename).name,
                         data=_read_member(archive, m, max_ratio))


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, max_ratio: float) -> bytes:
    limit = min(member.file_size, int(max(member.compress_size, 1) * max_ratio)) + 1
    try:
        with archive.open(member) as fh:
            data = fh.read(limit)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ArchiveError("an entry of the archive is corrupt or uses an unsupported "
                           "compression method") from exc
    if len(data) > member.file_size:
        raise ArchiveError("an archive entry is larger than its directory says; refused")
    return data
