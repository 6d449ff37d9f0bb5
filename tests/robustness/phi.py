"""Patient-data markers for the PHI test: real series rewritten so that the six identifying
attributes hold unique values, and a search for those values in every encoding the service
could write them in (text, DICOM PN components, dates with and without dashes, in any case).

Nothing here touches the service; tests/robustness/test_phi.py drives the flow.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

#: The attributes the issue names, by DICOM keyword.
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                "InstitutionName", "ReferringPhysicianName")


@dataclass(frozen=True)
class Markers:
    """One run's marker values: a random hex token inside each, within the VR's length."""

    token: str
    values: dict[str, str]  # keyword -> the value written into the DICOM files
    needles: dict[str, tuple[bytes, ...]]  # keyword -> lower-case byte strings to search for

    def all_needles(self) -> list[tuple[str, bytes]]:
        """(keyword, needle) for every encoding of every marker, plus the bare token."""
        found = [(k, n) for k, ns in self.needles.items() for n in ns]
        return [*found, ("token", self.token.encode())]


def make_markers(seed: int | None = None) -> Markers:
    """Fresh markers: a 10-hex-digit token (random per run) and a birth date made of it."""
    token = secrets.token_hex(5) if seed is None else f"{random.Random(seed).getrandbits(40):010x}"
    rng = random.Random(token)
    year, month, day = rng.randrange(1901, 1931), rng.randrange(1, 13), rng.randrange(1, 29)
    family, given = f"PHIMARK-NAME-{token}", f"PHIMARK-GIVEN-{token}"
    ref_family, ref_given = f"PHIMARK-REF-{token}", f"PHIMARK-REFG-{token}"
    values = {
        "PatientName": f"{family}^{given}",
        "PatientID": f"PHIMARK-ID-{token}",
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "AccessionNumber": f"PHIACC{token}",  # SH: 16 characters at most
        "InstitutionName": f"PHIMARK-INST-{token}",
        "ReferringPhysicianName": f"{ref_family}^{ref_given}",
    }
    dates = (f"{year:04d}{month:02d}{day:02d}", f"{year:04d}-{month:02d}-{day:02d}")
    needles = {
        "PatientName": (family, given, f"{family}^{given}", f"{given} {family}"),
        "PatientID": (values["PatientID"],),
        "PatientBirthDate": dates,
        "AccessionNumber": (values["AccessionNumber"],),
        "InstitutionName": (values["InstitutionName"],),
        "ReferringPhysicianName": (ref_family, ref_given),
    }
    return Markers(token, values, {k: tuple(n.lower().encode() for n in ns)
                                   for k, ns in needles.items()})


def _mark(ds: Dataset, markers: Markers, top: bool) -> None:
    """Set the markers in ``ds`` (all six at the top level) and wherever a sequence item
    carries one of the attributes (enhanced files repeat some in their sequences)."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _mark(item, markers, top=False)
    for keyword, value in markers.values.items():
        if top or keyword in ds:
            setattr(ds, keyword, value)


def _mark_sequences(ds: Dataset, markers: Markers) -> None:
    """Sequences that carry the patient's id and the accession number in real files (other
    patient ids; the request an enhanced image answers), holding the markers."""
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = markers.values["PatientID"], "TEXT"
    ds.OtherPatientIDsSequence = [other]
    request = Dataset()
    request.AccessionNumber = markers.values["AccessionNumber"]
    request.StudyInstanceUID = ds.get("StudyInstanceUID", generate_uid())
    ds.ReferencedRequestSequence = [request]


def invalid(markers: Markers) -> Markers:
    """The same markers, with a birth date that is not a date and an accession number longer
    than its VR allows (pydicom warns about such values, quoting some of them)."""
    values = {**markers.values, "PatientBirthDate": f"PHIMARK-BD-{markers.token}",
              "AccessionNumber": f"PHIMARK-ACC-{markers.token}"}
    return Markers(markers.token, values, markers.needles)


def write_marked(source: Path, target: Path, markers: Markers,
                 study_uid: str | None = None) -> Path:
    """A copy of one real DICOM file with the markers set (in sequences too); a new
    Study/Series/SOP Instance UID when ``study_uid`` is given (a second study of the same
    images)."""
    ds = pydicom.dcmread(source)
    _mark_sequences(ds, markers)
    _mark(ds, markers, top=True)
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # for ``invalid`` markers
    try:
        ds.save_as(target, enforce_file_format=False)
    finally:
        config.settings.writing_validation_mode = mode
    return target


def expanded(data: bytes) -> list[bytes]:
    """``data`` and what it decodes to: zlib-inflated bytes and, for a pickle (RQ's job
    payloads), the repr of the unpickled value. Used only on what this test's own Redis holds."""
    found = [data]
    try:
        inflated = zlib.decompress(data)
    except zlib.error:
        inflated = None
    for candidate in (inflated, data):
        if candidate is None:
            continue
        if candidate is not data:
            found.append(candidate)
        with contextlib.suppress(Exception):  # not a pickle: the bytes were searched
            found.append(repr(pickle.loads(candidate)).encode())
    return found


def hits(markers: Markers, where: str, data: bytes | str) -> list[str]:
    """"where: keyword=needle" for each marker encoding found in ``data`` (any case)."""
    blob = (data.encode("utf-8", "replace") if isinstance(data, str) else data).lower()
    return [f"{where}: {k}={n.decode()}" for k, n in markers.all_needles() if n in blob]


def search_all(markers: Markers, items: Iterable[tuple[str, bytes | str]]) -> list[str]:
    """Every hit in every (where, data) pair."""
    return [hit for where, data in items for hit in hits(markers, where, data)]


def files_and_names(folder: Path, skip: Iterable[Path] = ()) -> list[tuple[str, bytes]]:
    """(path, bytes) for every file under ``folder`` and (path, name) for every entry's name,
    leaving out the folders in ``skip``."""
    skipped = [p.resolve() for p in skip]
    found: list[tuple[str, bytes]] = []
    for path in sorted(folder.rglob("*")):
        if any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        found.append((f"name {path}", str(path.relative_to(folder)).encode()))
        if path.is_file() and not path.is_symlink():
            try:
                found.append((str(path), path.read_bytes()))
            except OSError:  # a socket, or a file removed meanwhile
                continue
    return found
