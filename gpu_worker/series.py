"""Find, group, sort and decode DICOM image series.

``scan`` reads headers (pixel data is left on disk), ``find_series`` groups 2-D frames into
stacks, ``choose_series`` picks one and ``decode_series`` reads its pixels into a (K, J, I)
array of stored values with the geometry of :mod:`gpu_worker.geometry`.

Rules, after DICOM PS3.3 C.7.6.2 (Image Plane): frames group by SeriesInstanceUID, then by
orientation and size (so a localizer in the same series becomes its own stack); slices are
ordered by their position along the slice normal, never by InstanceNumber or file name; when
every position repeats the same number of times the stack is 4-D (time points), and one time
point is taken. Nothing here logs or returns patient data.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from dicomstl.errors import (
    DecodeError,
    NoImagesError,
    SeriesChoiceError,
    SeriesGeometryError,
)
from gpu_worker.geometry import Geometry
from gpu_worker.sources import Source

log = logging.getLogger(__name__)

#: A gap larger than this many times the median slice spacing is reported.
GAP_FACTOR = 1.5
#: Direction cosines closer than this belong to one orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Positions closer than this along the normal (mm) are the same slice position.
POSITION_TOLERANCE_MM = 1e-3


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
    datasets: list = field(default_factory=list)  # per source: header (pixels deferred) or None
    not_dicom: int = 0
    not_image: int = 0


@dataclass
class SeriesStack:
    """Frames that form one volume (or one volume per time point)."""

    uid: str  # SeriesInstanceUID, with '#n' when a series splits into several stacks
    modality: str
    description: str
    rows: int
    cols: int
    frames: list[Frame]  # sorted along the normal, then by time
    positions: int  # distinct slice positions
    time_points: int
    problem: str | None = None  # why this stack cannot become a volume
    spacing_mm: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def voxels(self) -> int:
        return self.rows * self.cols * self.positions

    def as_choice(self) -> dict:
        """What a user picks a series by: no patient data, sizes in voxels and mm."""
        return {"uid": self.uid, "modality": self.modality, "description": self.description,
                "slices": self.positions, "time_points": self.time_points,
                "size": [self.cols, self.rows, self.positions],
                "spacing_mm": [float(v) for v in self.spacing_mm]}

    def summary(self) -> str:
        """One line for users: modality, description, slices, size, spacing (no patient data)."""
        sx, sy, sz = self.spacing_mm
        time = f", {self.time_points} time points" if self.time_points > 1 else ""
        text = (f"{self.uid}: {self.modality} '{self.description}', {self.positions} slices"
                f"{time}, {self.cols}x{self.rows}x{self.positions} voxels, "
                f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm")
        return text + (f" (not usable: {self.problem})" if self.problem else "")


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


def scan(sources: Sequence[Source]) -> Scan:
    """Read the headers of every source; count files that are not DICOM or not images."""
    # Sequential: header parsing holds the GIL, so threads only add contention.
    datasets = [_read_header(src) for src in sources]
    result = Scan(sources=list(sources), frames=[], datasets=datasets)
    for index, ds in enumerate(datasets):
        if ds is None:
            result.not_dicom += 1
            continue
        try:
            frames = _frames_of(ds, index)
        except (ValueError, TypeError, AttributeError):
            frames = []
        if not frames:
            result.not_image += 1
        result.frames.extend(frames)
    return result


def find_series(found: Scan) -> list[SeriesStack]:
    """Group frames into stacks: by series, then by orientation and size.

    Orientations are compared with a tolerance (ORIENTATION_TOLERANCE on each direction
    cosine), not by rounding, so scanner noise in the last digits never splits a series.
    """
    per_series: dict[str, list[tuple[np.ndarray, int, int, list[Frame]]]] = defaultdict(list)
    for fr in found.frames:
        cosines = np.array(fr.row_dir + fr.col_dir)
        for ref, rows, cols, members in per_series[fr.series_uid]:
            if (rows, cols) == (fr.rows, fr.cols) and (
                    np.abs(ref - cosines).max() <= ORIENTATION_TOLERANCE):
                members.append(fr)
                break
        else:
            per_series[fr.series_uid].append((cosines, fr.rows, fr.cols, [fr]))
    stacks = []
    for uid, groups in per_series.items():
        parts = sorted((members for *_, members in groups), key=len, reverse=True)
        for n, frames in enumerate(parts):
            stacks.append(_make_stack(uid if len(parts) == 1 else f"{uid}#{n + 1}", frames))
    stacks.sort(key=lambda s: (not s.usable, -s.voxels))
    return stacks


def _make_stack(uid: str, frames: list[Frame]) -> SeriesStack:
    first = frames[0]
    normal = np.cross(first.row_dir, first.col_dir)
    along = np.array([np.dot(f.position, normal) for f in frames])
    # Cluster positions along the normal, then sort the repeats of a position by time.
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    along = along[order]
    new_position = np.concatenate([[True], np.diff(along) > POSITION_TOLERANCE_MM])
    starts = np.flatnonzero(new_position)
    n_pos = len(starts)
    counts = np.diff(np.append(starts, len(frames)))
    ordered: list[Frame] = []
    for lo, n in zip(starts, counts, strict=True):  # each position is a contiguous run
        ordered.extend(sorted(frames[lo:lo + n], key=lambda f: f.time_key))
    stack = SeriesStack(uid=uid, modality=first.modality, description=first.description,
                        rows=first.rows, cols=first.cols, frames=ordered, positions=n_pos,
                        time_points=int(counts[0]))
    positions = along[new_position]
    step = float(np.median(np.diff(positions))) if n_pos > 1 else 0.0
    stack.spacing_mm = (first.spacing_ij[0], first.spacing_ij[1], step)
    if n_pos < 2:
        stack.problem = ("a single slice position, not a volume" if len(frames) == 1 else
                         f"{len(frames)} images all at one position, not a volume")
    elif not (counts == counts[0]).all():
        stack.problem = (f"duplicate slice positions ({int((counts > 1).sum())} positions "
                         "repeat, unevenly); the series is incomplete or mixes acquisitions")
    return stack


def choose_series(stacks: list[SeriesStack], series: str | None = None) -> SeriesStack:
    """The stack to convert.

    ``series`` is None (the only usable stack, else an error listing them), ``"largest"``
    (most voxels), or a SeriesInstanceUID (optionally with the ``#n`` of a split series).
    """
    usable = [s for s in stacks if s.usable]
    listing = "\n".join("  " + s.summary() for s in stacks)
    if series is None:
        if len(usable) == 1:
            return usable[0]
        if not usable:
            raise SeriesGeometryError("no series in the input forms a volume:\n" + listing)
        raise SeriesChoiceError(
            f"the input holds {len(usable)} series that could become a model; choose one "
            "with --series UID (or --series largest):\n" + listing,
            choices=[s.as_choice() for s in usable])
    if series == "largest":
        if not usable:
            raise SeriesGeometryError("no series in the input forms a volume:\n" + listing)
        return max(usable, key=lambda s: s.voxels)
    matches = [s for s in stacks if s.uid == series or s.uid.split("#")[0] == series]
    if not matches:
        raise SeriesChoiceError(f"series {series} is not in the input; it holds:\n" + listing)
    if len(matches) > 1:
        matches = [s for s in matches if s.usable] or matches
    chosen = matches[0]
    if not chosen.usable:
        raise SeriesGeometryError(f"series {chosen.uid} cannot become a volume: "
                                  f"{chosen.problem}")
    return chosen


@dataclass
class DecodedSeries:
    """Stored pixel values of one time point, sorted along the normal, with their geometry."""

    pixels: np.ndarray  # (K, J, I) stored values
    slopes: np.ndarray  # (K,) RescaleSlope per slice
    intercepts: np.ndarray  # (K,)
    geometry: Geometry
    modality: str
    description: str
    warnings: list[str]


def slice_frames(stack: SeriesStack, time_point: int = 0) -> list[Frame]:
    """The frames of one time point, one per slice position, in slice order."""
    if not 0 <= time_point < stack.time_points:
        raise SeriesChoiceError(f"time point {time_point} is out of range: the series has "
                                f"{stack.time_points} (0 to {stack.time_points - 1})")
    return stack.frames[time_point::stack.time_points]


def geometry_of(frames: list[Frame]) -> tuple[Geometry, list[str]]:
    """Geometry of sorted frames, and warnings about gaps."""
    first = frames[0]
    geometry = Geometry(row_dir=np.array(first.row_dir), col_dir=np.array(first.col_dir),
                        spacing_ij=first.spacing_ij,
                        origins=np.array([f.position for f in frames], dtype=np.float64))
    notes = []
    gaps = geometry.slice_spacings
    median = float(np.median(gaps))
    big = np.flatnonzero(gaps > GAP_FACTOR * median)
    if len(big):
        notes.append(f"{len(big)} gap(s) between slices larger than {GAP_FACTOR}x the median "
                     f"spacing of {median:.3g} mm (largest {gaps.max():.3g} mm); the model "
                     "bridges them")
    if any(f.spacing_ij != first.spacing_ij for f in frames):
        raise SeriesGeometryError("the slices of the series have different pixel spacings")
    return geometry, notes


def decode_series(found: Scan, stack: SeriesStack, time_point: int = 0) -> DecodedSeries:
    """Decode the pixels of one time point of a stack, slices in parallel."""
    frames = slice_frames(stack, time_point)
    geometry, notes = geometry_of(frames)
    if stack.time_points > 1:
        notes.append(f"the series has {stack.time_points} time points; using time point "
                     f"{time_point}")
    by_source: dict[int, list[tuple[int, Frame]]] = defaultdict(list)
    for k, fr in enumerate(frames):
        by_source[fr.source].append((k, fr))
    out: np.ndarray | None = None
    shape = (len(frames), stack.rows, stack.cols)

    def work(item: tuple[int, list[tuple[int, Frame]]]) -> None:
        nonlocal out
        source, members = item
        array = _pixels(found.sources[source], found.datasets[source], members[0][1])
        if out is None:
            out = np.empty(shape, dtype=array.dtype)
        if out is not None and not np.can_cast(array.dtype, out.dtype) and array.size and (
                array.min() < np.iinfo(out.dtype).min or array.max() > np.iinfo(out.dtype).max):
            # e.g. one slice signed, another unsigned: copying would silently wrap values
            raise DecodeError("the slices of the series store their pixels in different "
                              f"formats ({array.dtype} and {out.dtype}); cannot stack them")
        for k, fr in members:
            plane = array[fr.frame] if fr.frame is not None and array.ndim == 3 else array
            if plane.shape != shape[1:]:
                raise DecodeError(f"a slice decodes to {plane.shape[1]}x{plane.shape[0]} "
                                  f"pixels, but its header says {stack.cols}x{stack.rows}")
            out[k] = plane

    items = sorted(by_source.items())
    work(items[0])  # fixes the dtype
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(work, items[1:]))
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    return DecodedSeries(out, slopes, intercepts, geometry, stack.modality, stack.description,
                         notes)


def _pixels(src: Source, ds, frame: Frame) -> np.ndarray:
    """Decode one file's pixel data, turning decoder failures into a clear DecodeError."""
    if frame.raw is not None and src.path is not None:
        offset, dtype = frame.raw
        array = np.fromfile(src.path, dtype=dtype, count=frame.rows * frame.cols, offset=offset)
        if array.size == frame.rows * frame.cols:
            return array.reshape(frame.rows, frame.cols)
        raise DecodeError("a file of the series is truncated: its pixel data is shorter "
                          "than its header says")
    name = pydicom.uid.UID(frame.transfer_syntax).name if frame.transfer_syntax else "unknown"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ds is None:
                ds = pydicom.dcmread(src.open(), force=True)
            _infer_transfer_syntax(ds)
            array = ds.pixel_array
            del ds.PixelData  # the array is copied into the volume; free the bytes now
            return array
    except NotImplementedError as exc:
        raise DecodeError(f"the series uses the transfer syntax '{name}', which this "
                          "installation cannot decode") from exc
    except (ValueError, RuntimeError, EOFError, OSError, AttributeError, KeyError) as exc:
        text = str(exc)
        if "less than expected" in text or "truncated" in text.lower() or isinstance(
                exc, EOFError):
            raise DecodeError("a file of the series is truncated: its pixel data is shorter "
                              "than its header says") from exc
        if "no (0002,0010)" in text or ("Transfer Syntax" in text and "no " in text):
            raise DecodeError("a file of the series has no transfer syntax, so its pixel "
                              "data cannot be read") from exc
        raise DecodeError(f"the pixel data of a slice ('{name}') is corrupt and cannot be "
                          "decoded") from exc


def _infer_transfer_syntax(ds) -> None:
    """Give a file without File Meta the (uncompressed) syntax pydicom read it with."""
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                              pydicom.uid.ExplicitVRLittleEndian if little else
                              pydicom.uid.ExplicitVRBigEndian)


def require_images(found: Scan) -> None:
    """Raise NoImagesError, with counts, when the scan found no image frames."""
    if found.frames:
        return
    parts = [f"{len(found.sources)} file(s) read"]
    if found.not_dicom:
        parts.append(f"{found.not_dicom} not readable as DICOM (corrupt, or not DICOM)")
    if found.not_image:
        parts.append(f"{found.not_image} DICOM object(s) without a placeable image "
                     "(reports, structure sets, presentation states, or no plane geometry)")
    raise NoImagesError("no DICOM images found: " + "; ".join(parts))
