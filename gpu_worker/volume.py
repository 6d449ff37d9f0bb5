"""Volume stage: stored values to Hounsfield units, crop, downsample, smooth, islands.

Arrays are indexed [k slice, j row, i column]; the geometry maps them to LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from dicomstl.errors import ConversionError, EmptySurfaceError
from gpu_worker.decode import DecodedSeries

#: 26-connectivity: voxels touching by a face, an edge or a corner belong to one part, so
#: removing a part never changes a marching cube of a part that is kept.
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Volume:
    """Voxel values with their geometry.

    data : (K, J, I) int16 (whole numbers) or float32; HU for CT, stored values otherwise.
    units : "HU" or "stored".
    """

    data: np.ndarray
    geometry: object  # gpu_worker.geometry.Geometry
    modality: str
    units: str
    description: str = ""
    warnings: list[str] = field(default_factory=list)


def to_volume(decoded: DecodedSeries, xp=np) -> Volume:
    """Apply each slice's RescaleSlope/Intercept for CT (HU); other modalities keep stored units.

    The result stays int16 when every slope and intercept is a whole number and the values fit,
    which halves memory and lets thresholds on whole HU be exact. ``xp`` is the array module of
    ``decoded.pixels``: numpy, or cupy on the GPU engine, where the same arithmetic runs.
    """
    pixels = decoded.pixels
    if decoded.modality == "CT":
        whole = (np.all(decoded.slopes == np.round(decoded.slopes))
                 and np.all(decoded.intercepts == np.round(decoded.intercepts)))
        if whole and np.all(decoded.slopes == 1):
            lo = int(pixels.min()) + int(decoded.intercepts.min())
            hi = int(pixels.max()) + int(decoded.intercepts.max())
            if lo >= -32768 and hi <= 32767:
                data = pixels.astype(np.int16)
                data += xp.asarray(decoded.intercepts.astype(np.int16))[:, None, None]
                return Volume(data, decoded.geometry, "CT", "HU", decoded.description,
                              list(decoded.warnings))
        slopes = xp.asarray(decoded.slopes.astype(np.float32))[:, None, None]
        intercepts = xp.asarray(decoded.intercepts.astype(np.float32))[:, None, None]
        data = pixels.astype(np.float32) * slopes + intercepts
        return Volume(data, decoded.geometry, "CT", "HU", decoded.description,
                      list(decoded.warnings))
    if np.issubdtype(pixels.dtype, np.integer) and int(pixels.min()) >= -32768 and (
            int(pixels.max()) <= 32767):
        data = pixels.astype(np.int16, copy=False)
    else:
        data = pixels.astype(np.float32)
    return Volume(data, decoded.geometry, decoded.modality or "OT", "stored",
                  decoded.description, list(decoded.warnings))


def parse_crop(text: str, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Parse ``i0:i1,j0:j1,k0:k1`` (column, row, slice index ranges; empty ends allowed)."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ConversionError("--crop takes three ranges, columns,rows,slices, e.g. "
                              "'100:400,50:450,0:120'")
    out = []
    for part, size, axis in zip(parts, (shape[2], shape[1], shape[0]),
                                ("columns", "rows", "slices"), strict=False):
        try:
            lo_s, hi_s = part.split(":")
            lo = int(lo_s) if lo_s.strip() else 0
            hi = int(hi_s) if hi_s.strip() else size
        except ValueError as exc:
            raise ConversionError(f"--crop range '{part}' is not of the form start:stop") from exc
        if not 0 <= lo < hi <= size:
            raise ConversionError(f"--crop range {lo}:{hi} for {axis} is outside 0:{size}")
        out.append(slice(lo, hi))
    return out[2], out[1], out[0]


def crop(volume: Volume, box: tuple[slice, slice, slice], xp=np) -> Volume:
    """The sub-volume ``data[box]`` (box in [k, j, i] order) with its geometry; ``xp``: the
    data's array module."""
    ks, js, is_ = box
    geometry = volume.geometry.crop(ks.start, js.start, is_.start, ks.stop)
    data = xp.ascontiguousarray(volume.data[box])
    return replace(volume, data=data, geometry=geometry)


def downsample(volume: Volume, factor: int) -> Volume:
    """Average blocks of factor^3 voxels (edges that do not fill a block are dropped)."""
    if factor <= 1:
        return volume
    k, j, i = (s // factor for s in volume.data.shape)
    if min(k, j, i) < 2:
        raise ConversionError(f"--downsample {factor} leaves fewer than 2 voxels along an axis")
    blocks = volume.data[: k * factor, : j * factor, : i * factor].astype(np.float32)
    data = blocks.reshape(k, factor, j, factor, i, factor).mean(axis=(1, 3, 5),
                                                                dtype=np.float32)
    return replace(volume, data=data, geometry=volume.geometry.downsample(factor, k))


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian taps (float64) for ``sigma`` voxels, radius truncate*sigma;
    the same taps as scipy.ndimage.gaussian_filter, shared by both engines."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * x**2)
    return weights / weights.sum()


def smoothing_sigmas(volume: Volume, sigma_mm: float) -> tuple[float, float, float]:
    """Standard deviation in voxels along (slice, row, column) for ``sigma_mm`` millimetres."""
    spacing_k = float(np.mean(np.abs(volume.geometry.slice_spacings))) if len(
        volume.geometry.origins) > 1 else 1.0
    return (sigma_mm / spacing_k, sigma_mm / volume.geometry.spacing_ij[1],
            sigma_mm / volume.geometry.spacing_ij[0])


def smooth(volume: Volume, sigma_mm: float) -> Volume:
    """Gaussian smoothing with a standard deviation of ``sigma_mm`` millimetres on each axis.

    Three separable float32 passes (slice, row, column axes) with edge values repeated, each
    accumulated in float64: scipy's arithmetic, which the GPU kernel repeats bit for bit.
    """
    if sigma_mm <= 0:
        return volume
    data = volume.data.astype(np.float32)
    for axis, sigma in enumerate(smoothing_sigmas(volume, sigma_mm)):
        data = ndimage.correlate1d(data, gaussian_weights(sigma), axis=axis,
                                   output=np.float32, mode="nearest")
    return replace(volume, data=data)


def oriented(data: np.ndarray, level: float, invert: bool) -> tuple[np.ndarray, float]:
    """Data and level such that ``inside == (data >= level)``.

    With ``invert`` the inside is ``value < level``: the data are negated (int16 data stay
    whole numbers, so the threshold stays exact).
    """
    if not invert:
        return data, level
    if np.issubdtype(data.dtype, np.integer):
        # value < L  <=>  -value > -L  <=>  -value >= floor(-L) + 1 for whole numbers
        return (-data.astype(np.int32)).astype(np.int16), float(np.floor(-level) + 1)
    return -data, -level


def band(data, low: float, high: float, xp) -> tuple[object, float]:
    """Data and level such that ``inside == (data >= level)`` for the band
    ``low <= value < high`` (a two-sided threshold, same units as ``data``: the band and the
    one-sided level ``high`` share their boundary, neither overlapping nor leaving a gap),
    with each surface vertex where a one-sided level would put it.

    Marching cubes puts a vertex where the data interpolate to the level along a cut edge, so
    each voxel's value must measure the distance to the boundary that the edge crosses:
    ``value - low`` towards the voxels below the band, ``high - value`` towards those above.
    Outside voxels have one boundary; a band voxel takes the one its 6-neighbours outside
    the band cross (``min`` of both where it has neighbours of both kinds: a band one voxel
    thin, where no single value is exact). Integer data stay whole numbers (int16, clipped:
    only the values near 0 shape the surface), so the threshold stays exact. ``xp``: the array
    module of ``data``.
    """
    integer = np.issubdtype(data.dtype, np.integer)
    if integer:  # whole numbers: value < high  <=>  value <= ceil(high) - 1
        data = data.astype(np.int32)
        low, high = int(np.ceil(low)), int(np.ceil(high)) - 1
    else:
        low, high = data.dtype.type(low), data.dtype.type(high)
    from_low, from_high = data - low, high - data
    below, above = from_low < 0, from_high < 0
    near_below, near_above = _touches(below, xp), _touches(above, xp)
    field = xp.where(near_above & ~near_below, from_high,
                     xp.where(near_below & ~near_above, from_low,
                              xp.minimum(from_low, from_high)))
    field = xp.where(above, from_high, xp.where(below, from_low, field))
    if integer:
        return xp.clip(field, -32768, 32767).astype(np.int16), 0.0
    return field, 0.0


def _touches(mask, xp):
    """Where a 6-neighbour of a voxel is in ``mask`` (bool, [k, j, i])."""
    out = xp.zeros_like(mask)
    for axis in range(3):
        ahead = [slice(None)] * 3
        behind = [slice(None)] * 3
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        out[tuple(behind)] |= mask[tuple(ahead)]
        out[tuple(ahead)] |= mask[tuple(behind)]
    return out


@dataclass
class PartsReport:
    """What island removal found: parts (26-connected) before and after, voxels kept."""

    parts_found: int
    parts_kept: int
    voxels_kept: int


def keep_parts(data: np.ndarray, level: float, keep: str, min_part_mm3: float,
               voxel_mm3: float, drop_in_plane_border: bool = False
               ) -> tuple[np.ndarray, PartsReport]:
    """Remove islands from ``data >= level``; return data with removed voxels set below level.

    keep : "all", "largest", or a number N (the N largest parts; equal sizes in raster order
        of their first voxel).
    min_part_mm3 : parts smaller than this volume (mm^3) are dropped too.
    drop_in_plane_border : drop parts touching the first/last row or column (the air around
        the patient when the inside is air, as for the lung preset).
    """
    mask = data >= level
    require_inside(mask, data, level)
    if keep == "all" and min_part_mm3 <= 0 and not drop_in_plane_border:
        return data, PartsReport(-1, -1, int(mask.sum()))
    # scipy numbers parts in raster order of their first voxel.
    labels, n = ndimage.label(mask, structure=CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = border_labels(labels) if drop_in_plane_border else np.zeros(0, np.int64)
    kept, report = choose_parts(sizes, border, keep, min_part_mm3, voxel_mm3)
    drop = mask & ~kept[labels]
    return drop_voxels(data, drop, level), report


def require_inside(mask, data, level: float) -> None:
    """EmptySurfaceError when no voxel reaches the level."""
    if not bool(mask.any()):
        raise EmptySurfaceError(
            f"no voxel reaches the threshold {level:g}; the data range "
            f"{float(data.min()):g} to {float(data.max()):g} - choose another level or preset")


def border_labels(labels, xp=np):
    """Labels of the parts touching the first or last row or column of any slice (``xp``:
    the labels' array module)."""
    return xp.unique(xp.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                     labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))


def choose_parts(sizes: np.ndarray, border: np.ndarray, keep: str, min_part_mm3: float,
                 voxel_mm3: float) -> tuple[np.ndarray, PartsReport]:
    """Which parts to keep, as a boolean per label (label 0 is the background).

    sizes : voxels per label, labels numbered in raster order of their first voxel.
    border : labels to drop whatever their size.
    """
    sizes = np.asarray(sizes).copy()
    n = len(sizes) - 1
    sizes[0] = 0
    eligible = sizes * voxel_mm3 >= min_part_mm3
    eligible[0] = False
    eligible[np.asarray(border, dtype=np.int64)] = False
    ranked = np.flatnonzero(eligible)
    ranked = ranked[np.argsort(-sizes[ranked], kind="stable")]
    if keep == "largest":
        ranked = ranked[:1]
    elif keep != "all":
        ranked = ranked[: int(keep)]
    if len(ranked) == 0:
        raise EmptySurfaceError(
            f"island removal left nothing: {n} part(s) found, none large enough "
            f"(minimum {min_part_mm3:g} mm^3) or all touching the border")
    kept = np.zeros(n + 1, dtype=bool)
    kept[ranked] = True
    return kept, PartsReport(int(n), len(ranked), int(sizes[ranked].sum()))


def drop_voxels(data, drop, level: float):
    """``data`` with the voxels in ``drop`` set just below ``level`` (a copy if any change)."""
    if not bool(drop.any()):
        return data
    data = data.copy()
    below = np.floor(level) if np.issubdtype(data.dtype, np.integer) else level - 1.0
    data[drop] = data.dtype.type(below)
    return data
