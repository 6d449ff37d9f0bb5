"""Solid or hollow: fill internal voids, hollow a model to a wall of T mm, carve drain holes.

All three change the voxels of the oriented data (inside == data >= level) before marching
cubes, on the host with NumPy/SciPy for both engines (``engine.to_host``; the GPU engine gets
the changed volume back with ``to_device``), so the mesh stays one closed 2-manifold: a hollow
model has an outer shell and an inner shell whose normals point into the cavity (away from
the material), which marching cubes gives by itself.

Arrays are indexed [k slice, j row, i column]; distances are in mm (``distance.mask_spacing``);
the drain holes run along -S of the patient LPS frame (towards the feet: S is +z of LPS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomstl.errors import ConversionError
from gpu_worker import distance


@dataclass
class Changes:
    """What ``solid_or_hollow`` did: voxels filled and emptied, holes carved, notes."""

    filled_voxels: int = 0
    cavity_voxels: int = 0
    hole_voxels: int = 0
    holes_lps_mm: list[list[float]] | None = None
    notes: list[str] | None = None

    def as_dict(self, voxel_mm3: float) -> dict:
        """For the report: volumes in mm³, the holes' starting points in LPS mm."""
        return {"filled_mm3": round(self.filled_voxels * voxel_mm3, 1),
                "cavity_mm3": round(self.cavity_voxels * voxel_mm3, 1),
                "holes_mm3": round(self.hole_voxels * voxel_mm3, 1),
                "drain_holes_lps_mm": self.holes_lps_mm or []}


def reflect(data: np.ndarray, where: np.ndarray, level: float) -> np.ndarray:
    """``data`` with the voxels in ``where`` (all >= level) mirrored about ``level``
    (2*level - value, below it): the new surface then lies about half-way between an emptied
    voxel and its neighbour of the same value, not on the emptied voxel. Integer data stay
    whole numbers (``level`` is a half-integer there); a copy when anything changes."""
    if not where.any():
        return data
    data = data.copy()
    values = 2.0 * level - data[where].astype(np.float64)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        values = np.clip(values, info.min, min(info.max, np.floor(level)))
    else:  # strictly below, also for a value on the level
        below = np.nextafter(np.float32(level), np.float32(-np.inf))
        values = np.minimum(values, below)
    data[where] = values.astype(data.dtype)
    return data


def fill_voids(data: np.ndarray, level: float) -> tuple[np.ndarray, int]:
    """``data`` with every internal void (``distance.internal_voids``) set inside: the
    model then has no inner shells. Returns the data and the voxels filled."""
    mask = data >= level
    box = distance.bounding_box(mask)
    labels, n = distance.internal_voids(mask[box])
    if n == 0:
        return data, 0
    fill = np.zeros(mask.shape, bool)
    fill[box] = labels > 0
    data = data.copy()
    above = np.ceil(level) if np.issubdtype(data.dtype, np.integer) else level + 1.0
    data[fill] = data.dtype.type(above)
    return data, int(fill.sum())


#: Cavity parts below this fraction of the whole cavity stay solid: they save little material
#: and would print as closed chambers (a skull hollowed to 2 mm has two large parts and about
#: 1,900 pockets holding 2% of the cavity).
MIN_CAVITY_PART = 0.01


def cavity(mask: np.ndarray, spacing: tuple[float, float, float], wall_mm: float
           ) -> tuple[np.ndarray, int]:
    """What hollowing removes: the voxels deeper than ``wall_mm`` (mm) inside ``mask``,
    without the parts (6-connected) below ``MIN_CAVITY_PART`` of their total; and how many
    small parts were left solid. ConversionError when nothing is that deep (the model is
    nowhere thicker than 2 * wall_mm).

    A voxel's depth is its Euclidean distance to the nearest outside voxel's centre less half
    the smallest spacing, as the surface lies half-way between the two: the wall comes out
    ``wall_mm`` thick within half a voxel."""
    box = distance.bounding_box(mask)
    depth = distance.distance_mm(mask[box], spacing) - np.float32(min(spacing) / 2)
    inner = depth > wall_mm
    if not inner.any():
        deepest = float(depth.max()) if depth.size else 0.0
        raise ConversionError(
            f"--hollow-mm {wall_mm:g} leaves no cavity: the model is at most "
            f"{2 * deepest:.1f} mm thick, so a {wall_mm:g} mm wall fills it; choose a wall "
            f"below {deepest:.1f} mm or convert it solid")
    labels, n = ndimage.label(inner, structure=distance.BACKGROUND_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    kept = sizes >= MIN_CAVITY_PART * sizes.sum()
    out = np.zeros(mask.shape, bool)
    out[box] = kept[labels]
    return out, int(n - kept.sum())


def lowest_points(inner: np.ndarray, affine: np.ndarray, count: int, spread_mm: float
                  ) -> tuple[list[np.ndarray], int]:
    """Up to ``count`` voxels (k, j, i) of ``inner`` to drain from, and the number of its
    parts (6-connected): in each part, largest first, the voxel nearest the middle of its
    lowest patch (least LPS z, the -S side, within half a voxel), then more of the largest
    part's voxels, lowest first, at least ``spread_mm`` from the others."""
    labels, n = ndimage.label(inner, structure=distance.BACKGROUND_CONNECTIVITY)
    kji = np.argwhere(labels > 0)
    part = labels[tuple(kji.T)]
    ijk1 = np.column_stack([kji[:, ::-1], np.ones(len(kji))])
    lps = ijk1 @ affine[:3].T
    order = np.lexsort((lps[:, 2], part))
    sizes = np.bincount(part, minlength=n + 1)
    first = np.searchsorted(part[order], np.arange(1, n + 2))
    by_size = np.argsort(-sizes[1:], kind="stable")
    tie_mm = 0.5 * float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    picks = []
    for p in by_size[:count]:
        # the middle of the part's lowest patch (voxels within half a voxel of its bottom)
        mine = order[first[p]:first[p + 1]]
        low = mine[lps[mine, 2] <= lps[mine[0], 2] + tie_mm]
        middle = lps[low].mean(axis=0)
        picks.append(low[np.argmin(np.linalg.norm(lps[low] - middle, axis=1))])
    if len(picks) < count:
        largest = by_size[0] + 1
        for index in order[first[largest - 1]:first[largest]]:
            if len(picks) >= count:
                break
            if all(np.linalg.norm(lps[index] - lps[p]) >= spread_mm for p in picks):
                picks.append(index)
    return [kji[p] for p in picks], n


def carve_hole(mask: np.ndarray, start_kji: np.ndarray, affine: np.ndarray,
               diameter_mm: float) -> np.ndarray:
    """The voxels of a cylinder of ``diameter_mm`` from voxel ``start_kji`` along -S (LPS)
    to the first voxel past the wall of ``mask`` (or the volume's end), as a bool array."""
    inverse = np.linalg.inv(affine)
    down = inverse[:3, :3] @ np.array([0.0, 0.0, -1.0])  # index (i, j, k) per mm along -S
    start = np.asarray(start_kji[::-1], float)
    step = 0.25 * float(np.min(np.abs(np.linalg.svd(affine[:3, :3])[1])))
    shape = np.array(mask.shape[::-1])
    was_wall = False
    t = 0.0
    while True:
        t += step
        ijk = np.rint(start + t * down).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= shape):
            break
        inside = bool(mask[ijk[2], ijk[1], ijk[0]])
        if inside:
            was_wall = True
        elif was_wall:
            break
    end_mm = t + diameter_mm / 2
    radius = diameter_mm / 2
    a = affine[:3, :3] @ start + affine[:3, 3]
    b = a + np.array([0.0, 0.0, -end_mm])
    a_top = a + np.array([0.0, 0.0, radius])  # reach into the cavity above the lowest voxel
    corners = np.array([inverse[:3, :3] @ (p + off) + inverse[:3, 3]
                        for p in (a_top, b) for off in _cube(radius)])
    lo = np.clip(np.floor(corners.min(0)).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 1, shape)
    ii, jj, kk = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in range(3)), indexing="ij")
    ijk = np.column_stack([ii.ravel(), jj.ravel(), kk.ravel()]).astype(float)
    centres = ijk @ affine[:3, :3].T + affine[:3, 3]
    axis = b - a_top
    along = np.clip((centres - a_top) @ axis / (axis @ axis), 0.0, 1.0)
    off_axis = np.linalg.norm(centres - (a_top + along[:, None] * axis), axis=1)
    hit = ijk[off_axis <= radius].astype(int)
    hole = np.zeros(mask.shape, bool)
    hole[hit[:, 2], hit[:, 1], hit[:, 0]] = True
    return hole & mask


def _cube(r: float) -> np.ndarray:
    return np.array([[x, y, z] for x in (-r, r) for y in (-r, r) for z in (-r, r)])


def solid_or_hollow(data: np.ndarray, level: float, geometry, fill_cavities: bool,
                    hollow_mm: float, drain_holes: int, drain_hole_mm: float
                    ) -> tuple[np.ndarray, Changes]:
    """The oriented host data (inside == data >= level) after the options of "Solid or
    hollow": voids filled first, then hollowed to a wall of ``hollow_mm`` (0: solid), then
    ``drain_holes`` holes of ``drain_hole_mm`` mm diameter from the cavity's lowest points
    (-S) through the wall. ``geometry``: the volume's ``geometry.Geometry``."""
    changes = Changes(notes=[])
    if fill_cavities:
        data, changes.filled_voxels = fill_voids(data, level)
    if hollow_mm <= 0:
        return data, changes
    mask = data >= level
    spacing = distance.mask_spacing(geometry)
    inner, small = cavity(mask, spacing, hollow_mm)
    changes.cavity_voxels = int(inner.sum())
    if small:
        changes.notes.append(f"{small} small pocket(s) of the hollow (each below "
                             f"{MIN_CAVITY_PART:.0%} of it) are left solid")
    remove = inner
    if drain_holes > 0 and changes.cavity_voxels:
        wall = mask & ~inner
        starts, parts = lowest_points(inner, geometry.affine, drain_holes,
                                      spread_mm=4 * drain_hole_mm + hollow_mm)
        holes = np.zeros(mask.shape, bool)
        changes.holes_lps_mm = []
        for start in starts:
            holes |= carve_hole(wall, start, geometry.affine, drain_hole_mm)
            ijk1 = np.array([*start[::-1], 1.0])
            changes.holes_lps_mm.append([round(float(x), 2) for x in
                                         (geometry.affine @ ijk1)[:3]])
        changes.hole_voxels = int((holes & wall).sum())
        remove = inner | holes
        if parts > len(starts):
            changes.notes.append(
                f"the hollow has {parts} separate cavities and {len(starts)} drain hole(s): "
                f"{parts - len(starts)} cavities stay closed (give more --drain-holes)")
    return reflect(data, remove, level), changes
