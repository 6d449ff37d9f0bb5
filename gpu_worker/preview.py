"""The threshold preview: a series' value histogram and three orthogonal slices through the
volume centre, so a user can pick the level before converting.

The slices are resampled in the patient frame (LPS mm, through ``Geometry.affine``), not cut
along the index axes, so they look the same whatever the acquisition's orientation and are
never mirrored. Each image is shown as radiologists do:

========  ===================================  ===================================
plane     image right (+u)                     image down (+v)
========  ===================================  ===================================
axial     +x, the patient's left (seen from    +y, posterior (anterior at the top)
          the feet)
coronal   +x, the patient's left (seen from    -z, inferior (superior at the top)
          the front)
sagittal  +y, posterior (seen from the         -z, inferior (superior at the top)
          patient's left; anterior on the
          left)
========  ===================================  ===================================

Pixels are square (the same mm per pixel on every plane). Each plane has an 8-bit greyscale
PNG (linear window between the 0.5th and 99.5th percentiles) and its raw values on a grid of
at most ``VALUE_GRID`` pixels per side (nearest voxel, the volume's own dtype), so a browser
can overlay ``value >= level`` without asking the server again. Nothing else is written: no
header values, no names, only pixel values and geometry numbers.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from dicomstl.options import PRESETS, Options
from gpu_worker import volume as vol
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.pipeline import Progress, _Timer, choose_level, read_series

#: The planes, in the order they are shown; each file is ``<plane>.png``.
PLANES = ("axial", "coronal", "sagittal")
#: (image right, image down) unit vectors in LPS for each plane (see the module docstring).
AXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
#: The longest side of a slice image, pixels; and of its grid of raw values.
IMAGE_SIDE, VALUE_GRID = 512, 256
#: Histogram bins at most (whole-number data gets whole-number bin widths).
MAX_BINS = 256
META_NAME = "preview.json"


@dataclass
class Slice:
    """One plane: the display image (uint8, [v, u]) and the raw values on a coarser grid."""

    plane: str
    image: np.ndarray
    values: np.ndarray
    pixel_mm: float
    value_pixel_mm: float


@dataclass
class Preview:
    """What the preview shows of one series."""

    series: str  # the stack's uid (the DICOM SeriesInstanceUID, a generated number)
    modality: str
    units: str  # "HU" or "stored"
    shape_kji: tuple[int, int, int]
    edges: np.ndarray  # (bins + 1,) histogram bin edges, in the volume's units
    counts: np.ndarray  # (bins,) voxels per bin
    window: tuple[float, float]  # the value shown black and the one shown white
    default_level: float  # the level the conversion takes without --preset or --level
    centre_lps: np.ndarray  # (3,) mm, where the three planes cross
    slices: list[Slice] = field(default_factory=list)

    def levels(self) -> list[dict]:
        """The presets, marked on the histogram (CT only: they are in HU)."""
        if self.units != "HU":
            return []
        return [{"name": p.name, "level": p.level, "invert": p.invert}
                for p in PRESETS.values()]

    def as_dict(self) -> dict:
        """The preview's JSON (without URLs: the web adds those)."""
        return {
            "series": self.series, "modality": self.modality, "units": self.units,
            "volume_shape_kji": list(self.shape_kji),
            "histogram": {"edges": [float(e) for e in self.edges],
                          "counts": [int(c) for c in self.counts]},
            "levels": self.levels(), "default_level": self.default_level,
            "window": list(self.window), "centre_lps_mm": [round(float(c), 3)
                                                           for c in self.centre_lps],
            "slices": [{
                "plane": s.plane, "width": int(s.image.shape[1]),
                "height": int(s.image.shape[0]), "pixel_mm": s.pixel_mm,
                "right_lps": list(AXES[s.plane][0]), "down_lps": list(AXES[s.plane][1]),
                "values": {"width": int(s.values.shape[1]), "height": int(s.values.shape[0]),
                           "pixel_mm": s.value_pixel_mm, "dtype": s.values.dtype.name,
                           "byte_order": "little",
                           "data": base64.b64encode(
                               s.values.astype(s.values.dtype.newbyteorder("<"))
                               .tobytes()).decode()},
            } for s in self.slices],
        }


def make_preview(inputs: Sequence[str | os.PathLike], options: Options | None = None,
                 progress: Progress | None = None) -> Preview:
    """Read, decode and rescale the series the options choose (crop and downsample
    included), then compute its preview. Raises ConversionError (a user's error) as the
    conversion would, including SeriesChoiceError when several series could be meant."""
    options = options or Options()
    options.validate()
    timer = _Timer(progress)
    stack, decoded = read_series(inputs, options, timer)
    with timer.stage("volume"):
        volume = vol.to_volume(decoded, np)
        if options.crop:
            volume = vol.crop(volume, vol.parse_crop(options.crop, volume.data.shape), np)
        volume = vol.downsample(volume, options.downsample)
        default = Options(time_point=options.time_point)  # what no --preset/--level gives
        level = choose_level(volume, default, CpuEngine())[0]
        return compute(volume, stack.uid, level)


def compute(volume: vol.Volume, series: str, default_level: float) -> Preview:
    """The preview of a volume (host arrays): histogram, window and the three slices."""
    data = np.asarray(volume.data)
    edges, counts = histogram(data)
    sample = data[::2, ::2, ::2] if data.size > 2_000_000 else data
    lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + 1.0
    affine = volume.geometry.affine
    shape = data.shape
    corners = np.array([(i, j, k, 1.0) for i in (0, shape[2] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[0] - 1)]) @ affine.T
    low_mm, high_mm = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    centre = affine @ np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2, 1])
    extent = float((high_mm - low_mm).max()) or 1.0
    fine = extent / (IMAGE_SIDE - 1)
    coarse = extent / (VALUE_GRID - 1)
    as_float = data.astype(np.float32, copy=False)
    slices = []
    for plane in PLANES:
        floats = sample_plane(as_float, affine, plane, centre[:3], low_mm, high_mm, fine, order=1)
        image = np.clip(np.round((floats - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        values = sample_plane(as_float, affine, plane, centre[:3], low_mm, high_mm, coarse, order=0)
        slices.append(Slice(plane, image, values.astype(data.dtype), round(fine, 6),
                            round(coarse, 6)))
    return Preview(series=series, modality=volume.modality, units=volume.units,
                   shape_kji=tuple(int(s) for s in shape), edges=edges, counts=counts,
                   window=(lo, hi), default_level=float(default_level),
                   centre_lps=centre[:3], slices=slices)


def histogram(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) over all voxels: at most ``MAX_BINS`` equal bins from the minimum,
    whole-number widths for whole-number data (each bin [edge, next edge), the last closed)."""
    lo, hi = float(data.min()), float(data.max())
    if np.issubdtype(data.dtype, np.integer):
        width = max(1, math.ceil((hi - lo + 1) / MAX_BINS))
        bins = max(1, math.ceil((hi - lo + 1) / width))
        top = lo + width * bins
    else:
        bins, top = MAX_BINS, hi if hi > lo else lo + 1.0
    counts, edges = np.histogram(data, bins=bins, range=(lo, top))
    return edges, counts


def sample_plane(data: np.ndarray, affine: np.ndarray, plane: str, centre: np.ndarray,
                 low_mm: np.ndarray, high_mm: np.ndarray, pixel_mm: float,
                 order: int) -> np.ndarray:
    """The volume ``data`` ([k, j, i], float32) on a plane through ``centre`` (LPS mm)
    spanning the volume's bounding box (``low_mm``..``high_mm``), with square pixels of
    ``pixel_mm``; [v, u] with u, v as in ``AXES``. Points outside the volume take its
    minimum. ``order``: 0 nearest voxel, 1 trilinear."""
    right, down = (np.asarray(a) for a in AXES[plane])
    start = np.array(centre, dtype=np.float64)
    sizes = []
    for axis in (right, down):  # each is ± one LPS axis: start at the box's end it leaves
        a = int(np.argmax(np.abs(axis)))
        start[a] = low_mm[a] if axis[a] > 0 else high_mm[a]
        sizes.append(max(1, round(float(high_mm[a] - low_mm[a]) / pixel_mm) + 1))
    n_u, n_v = sizes
    vv, uu = np.mgrid[:n_v, :n_u]
    points = start + uu[..., None] * pixel_mm * right + vv[..., None] * pixel_mm * down
    ijk = np.linalg.solve(affine[:3, :3], (points.reshape(-1, 3) - affine[:3, 3]).T)
    out = ndimage.map_coordinates(data, ijk[::-1], output=np.float32, order=order,
                                  mode="constant", cval=float(data.min()), prefilter=False)
    return out.reshape(n_v, n_u)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``image`` ([row, column] uint8), with no metadata."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError("png_bytes takes a 2-D uint8 array")
    height, width = image.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    rows = np.hstack([np.zeros((height, 1), np.uint8), image])  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def write(preview: Preview, folder: Path) -> list[Path]:
    """Write ``preview.json`` and ``<plane>.png`` into ``folder`` (owner-only files); the
    JSON is written last, so its presence means the preview is whole."""
    written = []
    for s in preview.slices:
        written.append(_write_private(folder / f"{s.plane}.png", png_bytes(s.image)))
    written.append(_write_private(folder / META_NAME,
                                  json.dumps(preview.as_dict(), separators=(",", ":")).encode()))
    return written


def _write_private(path: Path, body: bytes) -> Path:
    temp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    os.replace(temp, path)
    return path
