"""Decode a series' pixels: one time point of a stack into a (K, J, I) array of stored
values, slices in parallel, with the stack's geometry. Uncompressed slices are read straight
from disk; compressed ones through pydicom and its pylibjpeg, openjpeg, libjpeg and CharLS
plugins (JPEG, JPEG-LS, JPEG 2000, RLE). A decoder's failure becomes a clear DecodeError.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom

from dicomstl.errors import DecodeError
from gpu_worker.dicom_headers import Frame, Scan
from gpu_worker.geometry import Geometry
from gpu_worker.series import SeriesStack, geometry_of, slice_frames
from gpu_worker.sources import Source


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
        array = _pixels(found.sources[source], found.datasets, source, members[0][1])
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
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)) or 1) as pool:
        list(pool.map(work, items[1:]))
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    return DecodedSeries(out, slopes, intercepts, geometry, stack.modality, stack.description,
                         notes)


def _pixels(src: Source, datasets: Sequence, index: int, frame: Frame) -> np.ndarray:
    """Decode one file's pixel data, turning decoder failures into a clear DecodeError.

    Uncompressed pixels are read from the file at ``frame.raw``; only other files need
    their header (``datasets[index]``, read on first use for files the fast reader took)."""
    if frame.raw is not None and src.path is not None:
        offset, dtype = frame.raw
        array = np.fromfile(src.path, dtype=dtype, count=frame.rows * frame.cols, offset=offset)
        if array.size == frame.rows * frame.cols:
            return array.reshape(frame.rows, frame.cols)
        raise DecodeError("a file of the series is truncated: its pixel data is shorter "
                          "than its header says")
    name = pydicom.uid.UID(frame.transfer_syntax).name if frame.transfer_syntax else "unknown"
    ds = datasets[index]
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
    except (ValueError, TypeError, RuntimeError, EOFError, OSError, AttributeError,
            KeyError) as exc:  # TypeError: pydicom on a PixelData element with no value
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
