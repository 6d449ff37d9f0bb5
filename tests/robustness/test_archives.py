"""Hostile archives end in a clear ``ArchiveError`` before anything large is inflated or parsed:
zip bombs (high ratio, nested, overlapping entries, a directory that lies about sizes), zip-slip
names (``../``, absolute, drive letters, UNC), symbolic links, control characters, 100 000 tiny
entries (and a lying entry count), duplicated names, a zip inside the zip and encrypted
entries. The nastiest go through the real API too (in-process app, real Redis, a real RQ
worker run): the upload is accepted, the job fails with the same clear message, and nothing
is left in ``incoming/`` or the job's upload folder.

Every archive is made here, byte by byte where zipfile cannot write the attack.
"""

from __future__ import annotations

import stat
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass

import pytest
from rq import Queue, SimpleWorker

from dicomstl.errors import ArchiveError
from dicomstl.queue import connect
from gpu_worker.sources import MAX_ARCHIVE_MEMBERS, collect_sources, read_zip
from tests.conftest import require_tool
from tests.service.helpers import auth

MiB = 1024**2
#: The most memory (bytes, Python allocations) refusing a hostile archive may take.
SMALL = 8 * MiB


@dataclass
class Entry:
    """One zip entry as written, every field forgeable."""

    name: bytes
    data: bytes = b""  # as stored (compressed with ``method``)
    method: int = 0  # 0 stored, 8 deflated
    crc: int | None = None  # of the uncompressed data (default: of ``data``)
    size: int | None = None  # uncompressed, as the headers claim (default: len(data))
    flags: int = 0
    external_attr: int = 0
    offset: int | None = None  # central directory's local-header offset (forged: shared data)


def raw_zip(entries: list[Entry], count: int | None = None) -> bytes:
    """A zip file of ``entries``; ``count`` forges the end record's entry count."""
    local, central = bytearray(), bytearray()
    for e in entries:
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        size = len(e.data) if e.size is None else e.size
        at = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 0, crc,
                             len(e.data), size, len(e.name), 0) + e.name + e.data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, e.flags, e.method, 0,
                               0, crc, len(e.data), size, len(e.name), 0, 0, 0, 0,
                               e.external_attr, at if e.offset is None else e.offset) + e.name
    n = len(entries) if count is None else count
    end = b""
    if n > 0xFFFF:  # zip64 end record and locator, as zip tools write them
        at = len(local) + len(central)
        end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central),
                          len(local)) + struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    short = min(n, 0xFFFF)
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, short, short, len(central),
                       len(local), 0)
    return bytes(local + central + end)


def deflated_zeros(size: int) -> bytes:
    """``size`` zero bytes, raw-deflated (about 1000:1), made without holding them."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MiB)
    out = [z.compress(block) for _ in range(size // MiB)]
    return b"".join([*out, z.compress(bytes(size % MiB)), z.flush()])


def zeros_crc(size: int) -> int:
    crc, block = 0, bytes(MiB)
    for _ in range(size // MiB):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(bytes(size % MiB), crc)


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """An honest zip file made by zipfile."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def bomb(size: int = 64 * MiB) -> bytes:
    """A one-entry high-ratio bomb: ``size`` bytes of zeros in about size/1000."""
    return raw_zip([Entry(b"I1.dcm", deflated_zeros(size), method=8, crc=zeros_crc(size),
                          size=size)])


def tiny_files(n: int, count: int | None = None) -> bytes:
    """``n`` one-byte stored entries (the end record may claim ``count`` instead)."""
    return raw_zip([Entry(b"%06d" % i, b"x") for i in range(n)], count=count)


def encrypted() -> bytes:
    """An entry flagged as ZipCrypto-encrypted (12-byte header, then the data)."""
    return raw_zip([Entry(b"I1.dcm", bytes(12) + b"DICM" * 8, flags=0x1, crc=0, size=32)])


def symlink() -> bytes:
    link = (stat.S_IFLNK | 0o777) << 16
    return raw_zip([Entry(b"I1.dcm", b"x" * 10), Entry(b"etc", b"/etc/passwd",
                                                         external_attr=link)])


def overlapping(size: int = 8 * MiB, copies: int = 50) -> bytes:
    """Fifield-style: many directory entries sharing one local entry's data."""
    data = deflated_zeros(size)
    first = Entry(b"I0", data, method=8, crc=zeros_crc(size), size=size)
    shared = [Entry(b"I%d" % i, data, method=8, crc=zeros_crc(size), size=size, offset=0)
              for i in range(1, copies)]
    body = raw_zip([first])
    # keep one local entry; point every further directory entry at it
    central_at = body.index(b"PK\x01\x02")
    central = bytearray(body[central_at:body.index(b"PK\x05\x06")])
    for e in shared:
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, 0, 8, 0, 0,
                               e.crc, len(data), size, len(e.name), 0, 0, 0, 0, 0, 0) + e.name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(central),
                      central_at, 0)
    return body[:central_at] + bytes(central) + end


def lying_sizes(size: int = 64 * MiB) -> bytes:
    """A deflate stream of ``size`` zeros whose headers claim 50 times its length (a ratio
    under the limit)."""
    data = deflated_zeros(size)
    return raw_zip([Entry(b"I1.dcm", data, method=8, crc=zeros_crc(size), size=len(data) * 50)])


ATTACKS = {
    # name: (archive maker, what the message says)
    "high-ratio bomb": (bomb, "zip bomb"),
    "nested bomb, named .zip": (lambda: zipped({"inner.zip": bomb()}), "another archive"),
    "nested bomb, disguised": (lambda: zipped({"I1.dcm": bomb()}),
                               "another archive"),
    "overlapping entries": (overlapping, "zip bomb"),
    "directory lies about sizes": (lying_sizes, "corrupt"),
    "100 000 tiny files": (lambda: tiny_files(100_000), "more than 20,000 entries"),
    "entry count forged low": (lambda: tiny_files(MAX_ARCHIVE_MEMBERS + 5, count=1),
                               "more than 20,000 entries"),
    "duplicated entries": (lambda: raw_zip([Entry(b"I1.dcm", b"a"), Entry(b"I1.dcm", b"b")]),
                           "same entry name twice"),
    "duplicated via backslash": (
        lambda: raw_zip([Entry(b"s/I1", b"a"), Entry(b"s\\I1", b"b")]), "same entry name twice"),
    "zip inside the zip": (lambda: zipped({"series.zip": zipped({"I1.dcm": b"x"})}),
                           "another archive"),
    "encrypted": (encrypted, "encrypted"),
    "symlink": (symlink, "symbolic link"),
    "../": (lambda: zipped({"../../evil/I1.dcm": b"x"}), "unsafe path"),
    "absolute": (lambda: zipped({"/etc/dicomstl-test": b"x"}), "unsafe path"),
    "drive letter": (lambda: raw_zip([Entry(b"C:\\evil\\I1.dcm", b"x")]), "unsafe path"),
    "drive letter, relative": (lambda: raw_zip([Entry(b"C:I1.dcm", b"x")]), "unsafe path"),
    "UNC path": (lambda: raw_zip([Entry(b"\\\\host\\share\\I1", b"x")]), "unsafe path"),
    "control characters": (lambda: raw_zip([Entry(b"I1\x1b[2J\r\n.dcm", b"x")]),
                           "control characters"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_archive_is_refused_clearly_and_cheaply(tmp_path, attack):
    make, message = ATTACKS[attack]
    path = tmp_path / "upload.zip"
    path.write_bytes(make())
    disguised = tmp_path / "upload.bin"  # no .zip suffix: recognised by its bytes
    disguised.write_bytes(path.read_bytes())
    tracemalloc.start()
    try:
        for target in (path, disguised):
            tracemalloc.reset_peak()
            with pytest.raises(ArchiveError, match=message) as caught:
                collect_sources([target])
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < SMALL, f"{attack}: {peak / MiB:.1f} MiB allocated to refuse it"
    finally:
        tracemalloc.stop()
    text = str(caught.value)
    assert str(tmp_path) not in text and "Traceback" not in text
    assert not any(ord(c) < 32 for c in text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin", "upload.zip"]


def test_legitimate_archives_still_read(tmp_path):
    """What the checks must let through: folders, a DICOM whose preamble starts like a zip,
    names with spaces and non-ASCII letters, as many entries as the cap allows."""
    dicom_like = b"PK\x03\x04" + bytes(124) + b"DICM" + b"\x02\x00" * 8
    path = tmp_path / "ok.zip"
    path.write_bytes(zipped({"Série 1/": b"", "Série 1/IM 0001": b"a" * 100,
                             "Série 1/IM 0002": dicom_like, "DICOMDIR": b"d"},
                            zipfile.ZIP_DEFLATED))
    got = {s.name: s.data for s in collect_sources([path])}
    assert got == {"IM 0001": b"a" * 100, "IM 0002": dicom_like, "DICOMDIR": b"d"}
    full = tmp_path / "full.zip"
    full.write_bytes(tiny_files(MAX_ARCHIVE_MEMBERS))
    assert len(list(read_zip(full))) == MAX_ARCHIVE_MEMBERS
    with pytest.raises(ArchiveError, match="more than 100 entries"):
        list(read_zip(full, max_members=100))


def test_an_encrypted_zip_made_by_a_real_tool_is_refused(tmp_path):
    """The same through Info-ZIP's ``zip -P`` (real ZipCrypto); make test installs zip."""
    import subprocess

    tool = require_tool("zip")
    (tmp_path / "I1.dcm").write_bytes(b"x" * 1000)
    subprocess.run([tool, "-q", "-P", "secret", "locked.zip", "I1.dcm"], cwd=tmp_path,
                   check=True)
    with pytest.raises(ArchiveError, match="encrypted"):
        collect_sources([tmp_path / "locked.zip"])


#: The nastiest, through the API and a worker run.
THROUGH_API = ["high-ratio bomb", "nested bomb, disguised", "overlapping entries",
               "100 000 tiny files", "encrypted", "symlink", "../", "drive letter",
               "zip inside the zip", "duplicated entries", "control characters"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_hostile_archives_through_the_api_fail_their_job_clearly(app, settings, api_key,
                                                                 tmp_path):
    client = app.test_client()
    submitted = {}
    for attack in THROUGH_API:
        path = tmp_path / "upload.zip"
        path.write_bytes(ATTACKS[attack][0]())
        with path.open("rb") as fh:
            r = client.post("/api/v1/jobs", data={"files": [(fh, "upload.zip")]},
                            content_type="multipart/form-data", headers=auth(api_key))
        assert r.status_code == 201, (attack, r.json)
        submitted[attack] = r.json["id"]
        assert not list(settings.incoming_dir.iterdir())
    conn = connect(settings.redis_url)
    SimpleWorker([Queue("bulk", connection=conn)], connection=conn).work(burst=True)
    for attack, job_id in submitted.items():
        view = client.get(f"/api/v1/jobs/{job_id}", headers=auth(api_key)).json
        assert view["state"] == "failed", (attack, view)
        assert ATTACKS[attack][1] in view["message"], (attack, view["message"])
        assert "internal error" not in view["message"]
        assert not (settings.jobs_dir / job_id / "upload").exists() or \
            not any((settings.jobs_dir / job_id / "upload").iterdir())
    assert not list(settings.incoming_dir.iterdir())
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()
