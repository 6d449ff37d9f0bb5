"""Input files: a folder (searched recursively), a list of files, or a .zip archive.

Archives are read in memory, member by member, and never extracted to disk, so an entry named
``../../x`` cannot escape; such entries are still refused, because they mark a crafted archive,
as are symbolic links, control characters in names, duplicated names, entries sharing their
data (overlapping zip bombs) and encrypted entries. Sizes, compression ratios and the number
of entries are checked before anything is inflated (zip bombs), the count from the end record
before the directory is even parsed. Archives inside the archive are not unpacked: the user is
told to unzip them first.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dicomstl.errors import ArchiveError, NoImagesError

#: Largest total uncompressed size of an archive, bytes.
MAX_ARCHIVE_BYTES = 4 * 1024**3
#: Largest ratio of uncompressed to compressed size, per member and overall. DICOM pixel data
#: compress about 2-10 times with deflate; 1000-fold ratios are made on purpose.
MAX_COMPRESSION_RATIO = 100.0
#: Most entries (files and folders) an archive may hold. A CT or MR series has up to a few
#: thousand slices; this matches the most files a folder upload may hold (``max_upload_files``)
#: and refuses a flood of tiny entries (each costs a parse) before the directory is read.
MAX_ARCHIVE_MEMBERS = 20_000
#: Most central-directory bytes per allowed entry (names and extra fields of about 500 bytes),
#: so that a lying entry count cannot make zipfile parse a huge directory either.
DIRECTORY_BYTES_PER_MEMBER = 512
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ENCRYPTED = 0x1  # general purpose flag bit 0


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
    return _is_zip(head)


def read_zip(path: Path, max_bytes: int = MAX_ARCHIVE_BYTES,
             max_ratio: float = MAX_COMPRESSION_RATIO,
             max_members: int = MAX_ARCHIVE_MEMBERS) -> Iterator[Source]:
    """The members of a zip archive as in-memory sources, after checking it is safe.

    Raises ArchiveError for an unreadable archive, more than ``max_members`` entries, an entry
    whose name leaves the archive's own folder, a symbolic link, a name with control
    characters, a duplicated name or data, an encrypted entry, an archive inside the archive,
    or sizes (bytes) or ratios over the limits (checked from the directory, then enforced
    again while inflating, since a directory can lie).
    """
    _check_entry_count(path, max_members)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ArchiveError("the archive is not a readable zip file") from exc
    with archive:
        if len(archive.infolist()) > max_members:
            raise _too_many(max_members)
        # not ZipInfo.is_dir(): it indexes the name, and a crafted entry's name can be empty
        members = [m for m in archive.infolist() if not m.filename.endswith("/")]
        _check_entries(members)
        total = 0
        total_compressed = 0
        for m in members:
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
            data = _read_member(archive, m, max_ratio)
            if _is_zip(data):
                raise _nested()
            yield Source(name=PurePosixPath(m.filename).name, data=data)


def _too_many(max_members: int) -> ArchiveError:
    return ArchiveError(f"the archive holds more than {max_members:,} entries; a series has "
                        "a few thousand at most: upload one series at a time")


def _nested() -> ArchiveError:
    return ArchiveError("the archive holds another archive, which is not unpacked: unzip "
                        "it and upload its files (or a zip of them) instead")


def _check_entry_count(path: Path, max_members: int) -> None:
    """Refuse an archive with too many entries before zipfile parses its directory (each
    entry costs a parse and about 500 bytes there): from the end record's count and directory
    size, then from the entry headers in the directory itself, since the count can lie. An
    unreadable end record is left to zipfile."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            tail_at = fh.seek(max(0, size - _EOCD.size - 65535))
            tail = fh.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < _EOCD.size:
                return
            _sig, _disk, _cd_disk, _here, entries, cd_size, _cd_at, _comment = \
                _EOCD.unpack_from(tail, at)
            cd_end = tail_at + at
            locator_at = at - _ZIP64_LOCATOR.size
            if locator_at >= 0 and tail[locator_at:locator_at + 4] == b"PK\x06\x07":
                _sig, _disk, eocd64_at, _disks = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
                fh.seek(eocd64_at)
                record = fh.read(_ZIP64_EOCD.size)
                if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                    fields = _ZIP64_EOCD.unpack(record)
                    entries, cd_size = max(entries, fields[6]), max(cd_size, fields[7])
                    cd_end = eocd64_at
            if entries > max_members or cd_size > max_members * DIRECTORY_BYTES_PER_MEMBER:
                raise _too_many(max_members)
            # where zipfile looks for the directory: just before its end record
            fh.seek(max(0, cd_end - cd_size))
            directory = fh.read(min(cd_size, cd_end))
    except (OSError, ValueError):  # ValueError: an offset past what a seek can take
        return
    if directory.count(b"PK\x01\x02") > max_members:
        raise _too_many(max_members)


def _check_entries(members: list[zipfile.ZipInfo]) -> None:
    """Refuse crafted entries: unsafe or odd names, links, shared data, encryption, nesting."""
    names: set[str] = set()
    offsets: set[int] = set()
    for m in members:
        raw = m.filename
        if not raw:
            raise ArchiveError("the archive contains an entry without a name; refused")
        name = PurePosixPath(raw.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in raw:
            raise ArchiveError("the archive contains an entry with an unsafe path "
                               "(absolute or leading outside the archive); refused")
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in raw):
            raise ArchiveError("the archive contains an entry whose name holds control "
                               "characters; refused")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise ArchiveError("the archive contains a symbolic link; links are refused: "
                               "zip the files themselves")
        if m.flag_bits & _ENCRYPTED:
            raise ArchiveError("the archive is encrypted (password-protected); save it "
                               "without a password and upload it again")
        key = str(name)
        if key in names:
            raise ArchiveError("the archive contains the same entry name twice; refused")
        if m.header_offset in offsets:
            raise ArchiveError("the archive contains entries sharing the same data "
                               "(a zip bomb?); refused before unpacking")
        names.add(key)
        offsets.add(m.header_offset)
        if name.suffix.lower() in (".zip", ".zipx", ".7z", ".rar", ".gz", ".tgz", ".tar"):
            raise _nested()


def _is_zip(data: bytes) -> bool:
    """Whether these bytes start a zip: a DICOM file has a free 128-byte preamble, so only
    one without ``DICM`` after it that starts with the local-file magic."""
    return data[:4] == b"PK\x03\x04" and data[128:132] != b"DICM"


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, max_ratio: float) -> bytes:
    limit = min(member.file_size, int(max(member.compress_size, 1) * max_ratio)) + 1
    try:
        with archive.open(member) as fh:
            data = fh.read(limit)
    except RuntimeError as exc:  # zipfile's "password required" (flag bit forged away)
        raise ArchiveError("the archive is encrypted (password-protected); save it "
                           "without a password and upload it again") from exc
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError,
            zlib.error) as exc:
        raise ArchiveError("an entry of the archive is corrupt or uses an unsupported "
                           "compression method") from exc
    if len(data) > member.file_size:
        raise ArchiveError("an archive entry is larger than its directory says; refused")
    return data
