"""DICOM headers: which files hold images, and each 2-D frame's identity and geometry.

``scan`` reads the headers of every source (pixel data is left on disk, only ``HEADER_TAGS``
are parsed) and turns each image, or each frame of a multi-frame object (Enhanced CT and MR:
geometry from the functional groups), into a ``Frame``; files that are not DICOM, or DICOM
objects without a placeable image, are counted. Plain uncompressed single-frame files on disk
are read by :mod:`gpu_worker.dicom_fastread` (same elements, same values, several times
faster), everything else by pydicom. Nothing here logs or returns patient data.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from dicomstl.errors import NoImagesError
from gpu_worker import dicom_fastread
from gpu_worker.sources import Source

#: Most voxels one file, or one series, may claim (2^31: 4 GiB as int16; the largest real
#: series here is 512x512x140, 37 M). Larger claims are refused from the header, before a
#: frame is listed or a pixel allocated: Rows and Columns go to 65535 and NumberOfFrames
#: to 2^31, so a 1 kB file can claim 65535x65535x10^6 voxels.
MAX_VOXELS = 2**31
#: Most frames one file may hold: real enhanced series hold hundreds to a few thousand; each
#: is listed (a Frame) before anything is decoded, so a claim of 10^9 1x1 frames would hang.
MAX_FRAMES = 32768


@dataclass(frozen=True)
class Frame:
    """One 2-D image: a single-frame file, or one frame of a multi-frame object."""

    source: int  # index into the scan's sources
    frame: int | None  # frame number (0-based) in a multi-frame object
    series_uid: str
    modality: str
    description: str
    rows: int
    cols: int
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    position: tuple[float, float, float]
    spacing_ij: tuple[float, float]  # (column spacing, row spacing), mm
    slope: float
    intercept: float
    time_key: tuple  # orders repeats of one position (4-D series)
    transfer_syntax: str
    raw: tuple[int, str] | None = None  # (byte offset, dtype) of uncompressed pixel data


@dataclass
class Scan:
    """Headers of every image frame found, and what was skipped."""

    sources: list[Source]
    frames: list[Frame]
    # per source: its pydicom header (pixels deferred), or None if not DICOM
    datasets: Sequence = field(default_factory=list)
    not_dicom: int = 0
    not_image: int = 0
    #: why each DICOM object without a placeable image has none, in words, with counts
    reasons: Counter = field(default_factory=Counter)


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _raw_numbers(ds, keyword: str):
    """A DS/IS element's numbers, parsed from its raw bytes when still unconverted.

    pydicom's own conversion validates each value through DSfloat, which costs more than the
    rest of a header read; plain float() on the bytes gives the same numbers.
    """
    if keyword not in ds:
        return None
    element = ds.get_item(keyword)
    raw = getattr(element, "value", None)
    if isinstance(raw, bytes):
        try:
            return [float(x) for x in raw.split(b"\\") if x.strip()]
        except ValueError:
            pass
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _functional_item(ds, index: int, name: str):
    """First item of a functional-group sequence for one frame, per-frame before shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in (per_frame[index] if per_frame and len(per_frame) > index else None,
                  shared[0] if shared else None):
        if group is not None and group.get(name):
            return group.get(name)[0]
    return None


def _frames_of(ds, source: int) -> list[Frame]:
    """The image frames a dataset holds; empty for non-image objects."""
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        return []
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return []
    if _claimed_voxels(ds) > MAX_VOXELS or int(ds.get("NumberOfFrames") or 1) > MAX_FRAMES:
        return []  # why_not_image says so; nothing is listed per frame or decoded
    common = {
        "source": source,
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "description": str(ds.get("SeriesDescription", "")).strip(),
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))
        if hasattr(ds, "file_meta") else "",
    }
    common["raw"] = _raw_pixel_location(ds)
    instance = int(ds.get("InstanceNumber") or 0)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    frames: list[Frame] = []
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        for f in range(n_frames):
            pos = _functional_item(ds, f, "PlanePositionSequence")
            ori = _functional_item(ds, f, "PlaneOrientationSequence")
            meas = _functional_item(ds, f, "PixelMeasuresSequence")
            pvt = _functional_item(ds, f, "PixelValueTransformationSequence")
            content = _functional_item(ds, f, "FrameContentSequence")
            frame = _make_frame(
                common, f,
                ori.get("ImageOrientationPatient") if ori else None,
                pos.get("ImagePositionPatient") if pos else None,
                meas.get("PixelSpacing") if meas else None,
                pvt.get("RescaleSlope") if pvt else None,
                pvt.get("RescaleIntercept") if pvt else None,
                (int(content.get("TemporalPositionIndex") or 0) if content else 0,
                 int(content.get("FrameAcquisitionNumber") or 0) if content else 0, f))
            if frame is None:
                return []
            frames.append(frame)
        return frames
    if n_frames != 1:
        return []  # a legacy multi-frame without plane geometry: not a volume we can place
    slope = _raw_numbers(ds, "RescaleSlope")
    intercept = _raw_numbers(ds, "RescaleIntercept")
    frame = _make_frame(
        common, None, _raw_numbers(ds, "ImageOrientationPatient"),
        _raw_numbers(ds, "ImagePositionPatient"), _raw_numbers(ds, "PixelSpacing"),
        slope[0] if slope else None, intercept[0] if intercept else None,
        (int(ds.get("TemporalPositionIdentifier") or 0), int(ds.get("AcquisitionNumber") or 0),
         float(ds.get("TriggerTime") or 0.0), str(ds.get("AcquisitionTime") or ""), instance))
    return [frame] if frame else []


_UNCOMPRESSED_LE = (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian)


def _raw_pixel_location(ds) -> tuple[int, str] | None:
    """Where the pixels of an uncompressed little-endian single-frame file lie on disk.

    Such pixels need no decoder: reading them straight from the file is several times faster
    than pydicom's general path and gives the same array (pydicom leaves unused high bits as
    stored). Only used when the element's length is exactly the image size.
    """
    meta = getattr(ds, "file_meta", None)
    if (not ds.filename or meta is None or meta.get("TransferSyntaxUID") not in _UNCOMPRESSED_LE
            or int(ds.get("NumberOfFrames") or 1) != 1 or ds.get("BitsAllocated") not in (8, 16)
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1):
        return None
    # keep_deferred: the raw element, its value's offset and length, and nothing read
    raw = ds.get_item("PixelData", keep_deferred=True)
    offset = getattr(raw, "value_tell", None)
    size = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    if offset is None or getattr(raw, "length", None) != size:
        return None
    kind = "i" if int(ds.get("PixelRepresentation", 0) or 0) == 1 else "u"
    return offset, f"<{kind}{int(ds.BitsAllocated) // 8}"


def _claimed_voxels(ds) -> int:
    """Rows x Columns x NumberOfFrames, as the header claims them."""
    return int(ds.Rows or 0) * int(ds.Columns or 0) * int(ds.get("NumberOfFrames") or 1)


def too_many_voxels(cols: int, rows: int, slices: int) -> str:
    """The words for an image or series over MAX_VOXELS (no patient data)."""
    return (f"{cols}x{rows}x{slices} voxels ({cols * rows * slices / 1e9:.3g} billion), over "
            f"the limit of {MAX_VOXELS / 1e9:.3g} billion")


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else \
        f"{n / 1e3:.0f} kB"


def why_not_image(ds) -> str:
    """Why a DICOM object gives no image frame, in words for the user (no patient data).

    Checked in this order, so that a file claiming more pixels than it holds is named as
    such (and never decoded: nothing is allocated for the size it claims)."""
    if "PixelData" not in ds:
        return "no pixel data"
    if "Rows" not in ds or "Columns" not in ds:
        return "no Rows or Columns element"
    rows, cols = int(ds.Rows or 0), int(ds.Columns or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    claimed = rows * cols * frames * samples * int(ds.get("BitsAllocated") or 8) // 8
    meta = getattr(ds, "file_meta", None)
    native = meta is not None and meta.get("TransferSyntaxUID") in (
        *_UNCOMPRESSED_LE, pydicom.uid.ExplicitVRBigEndian)
    length = getattr(ds.get_item("PixelData", keep_deferred=True), "length", None)
    if native and length is not None and length != 0xFFFFFFFF and length < claimed:
        return (f"less pixel data than the image claims: {cols}x{rows} pixels x {frames} "
                f"frame(s) is {_megabytes(claimed)}, the file holds {_megabytes(length)}")
    if samples != 1:
        return "colour pixels (only greyscale images make a volume)"
    if rows * cols * frames > MAX_VOXELS:
        return "an image too large: " + too_many_voxels(cols, rows, frames)
    if frames > MAX_FRAMES:
        return f"too many frames: {frames}, over the limit of {MAX_FRAMES}"
    if frames > 1 and "PerFrameFunctionalGroupsSequence" not in ds \
            and "SharedFunctionalGroupsSequence" not in ds:
        return "several frames but no plane geometry (no functional groups)"
    return "no plane geometry (no position, orientation or pixel spacing), as in reports, " \
        "secondary captures and presentation states"


def _make_frame(common, frame, iop, ipp, spacing, slope, intercept, time_key) -> Frame | None:
    iop = _floats(iop, 6) if iop is not None else None
    ipp = _floats(ipp, 3) if ipp is not None else None
    spacing = _floats(spacing, 2) if spacing is not None else None
    if iop is None or ipp is None or spacing is None or min(spacing) <= 0:
        return None
    row = np.array(iop[:3])
    col = np.array(iop[3:])
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        return None
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    # PixelSpacing is (row spacing = between rows, column spacing = between columns).
    return Frame(frame=frame, row_dir=tuple(row), col_dir=tuple(col), position=ipp,
                 spacing_ij=(spacing[1], spacing[0]),
                 slope=float(slope) if slope not in (None, "") else 1.0,
                 intercept=float(intercept) if intercept not in (None, "") else 0.0,
                 time_key=time_key, **common)


#: The only elements the converter reads; parsing skips the values of all others.
HEADER_TAGS = [
    "SOPClassUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "Rows", "Columns",
    "SamplesPerPixel", "NumberOfFrames", "InstanceNumber", "ImageOrientationPatient",
    "ImagePositionPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
    "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "AcquisitionTime",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "PlanarConfiguration", "PixelData",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
]


def _read_header(src: Source):
    """The dataset of one file with its pixel data left unread, or None if not DICOM.

    Only HEADER_TAGS are kept (and pixel data are deferred) for files on disk; archive
    members are parsed whole, since their bytes are in memory anyway.
    """
    kwargs = ({"defer_size": "64 KB", "specific_tags": HEADER_TAGS} if src.path is not None
              else {})
    ds = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for force in (False, True):  # without the preamble only with force=True
            try:
                ds = pydicom.dcmread(src.open(), force=force, **kwargs)
                break
            except InvalidDicomError:
                continue
            except Exception:
                return None
    # A corrupt file can parse into a few stray elements: keep only what has an identity.
    if ds is None or ("SOPClassUID" not in ds and "Rows" not in ds):
        return None
    return ds


class _Datasets(Sequence):
    """Per source, the pydicom header ``_read_header`` gives; read on first access for the
    files whose frames came from the fast reader (decoding them needs only ``Frame.raw``)."""

    _UNREAD = object()

    def __init__(self, sources: Sequence[Source]) -> None:
        self._sources = sources
        self._items: list = [self._UNREAD] * len(sources)

    def set(self, index: int, ds) -> None:
        self._items[index] = ds

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._items[index] is self._UNREAD:
            self._items[index] = _read_header(self._sources[index])
        return self._items[index]

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))


_WANTED_TAGS = frozenset(int(pydicom.tag.Tag(keyword)) for keyword in HEADER_TAGS)


def _fast_frames(src: Source, index: int) -> list[Frame] | None:
    """The frames of a plain uncompressed single-frame file, read from its bytes; None when
    the file needs pydicom (anything unusual, not an image, or pixels without a raw offset)."""
    if src.path is None:
        return None
    header = dicom_fastread.read_header(src.path, _WANTED_TAGS)
    if header is None:
        return None
    try:
        frames = _frames_of(header, index)
    except Exception:  # pydicom's reading decides what such a file is
        return None
    if not frames or any(fr.raw is None for fr in frames):
        return None
    return frames


#: What pydicom raises when it converts a corrupt element on first access (an unknown VR is a
#: NotImplementedError) or a value is not a number: the file has no usable image.
_ELEMENT_ERRORS = (ValueError, TypeError, AttributeError, NotImplementedError)


def scan(sources: Sequence[Source], fast: bool = True) -> Scan:
    """Read the headers of every source; count files that are not DICOM or not images.

    ``fast=False`` reads every file with pydicom (the reference the fast reader matches).
    """
    # Sequential: parsing holds the GIL, and the fast reader leaves little to share out.
    sources = list(sources)
    datasets = _Datasets(sources)
    result = Scan(sources=sources, frames=[], datasets=datasets)
    for index, src in enumerate(sources):
        frames = _fast_frames(src, index) if fast else None
        if frames is None:
            ds = _read_header(src)
            datasets.set(index, ds)
            if ds is None:
                result.not_dicom += 1
                continue
            try:
                frames = _frames_of(ds, index)
            except _ELEMENT_ERRORS:
                frames = []
            if not frames:
                result.not_image += 1
                try:
                    result.reasons[why_not_image(ds)] += 1
                except _ELEMENT_ERRORS:
                    result.reasons["unreadable image elements"] += 1
        result.frames.extend(frames)
    return result


def require_images(found: Scan) -> None:
    """Raise NoImagesError, with counts, when the scan found no image frames."""
    if found.frames:
        return
    parts = [f"{len(found.sources)} file(s) read"]
    if found.not_dicom:
        parts.append(f"{found.not_dicom} not readable as DICOM (corrupt, or not DICOM)")
    if found.not_image:
        why = "; ".join(f"{n} with {reason}" if found.not_image > 1 else reason
                        for reason, n in found.reasons.most_common())
        parts.append(f"{found.not_image} DICOM object(s) without a placeable image: {why}")
    raise NoImagesError("no DICOM images found: " + "; ".join(parts))
