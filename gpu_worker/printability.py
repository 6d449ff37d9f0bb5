"""The printability report: thinnest walls, shells and internal voids, fit on printer beds,
volume and material.

Computed on the host with NumPy, SciPy and Numba for both engines (the mask comes back with
``engine.to_host``), from the final mask (the voxels inside at the level after island removal
and the solid/hollow options, cropped to its bounding box) and the final mesh (LPS mm).

Wall thickness (method). ``D`` is the exact Euclidean distance (mm, with the voxel spacing)
from each inside voxel's centre to the nearest outside voxel's centre
(``distance.distance_mm``). The medial ridge is the inside voxels where ``D`` is not below any
of its 26 neighbours: the centres of the largest inscribed balls. The local thickness there
is the ball's diameter, ``2 * D - s/2`` with ``s`` the smallest voxel spacing: the surface lies
about half-way between the last inside and the first outside voxel, so ``2 * D``
overestimates by up to a voxel. Accuracy: within one voxel (a 1.0 mm wall sampled at 0.5 mm
reads 0.75 to 1.25 mm). The report gives the minimum and the 1st percentile over the ridge
voxels, and the area (mm², of the final mesh's triangles) of the surface within reach of a
ridge voxel thinner than the threshold: triangles whose centroid lies within the ball radius
plus one voxel of such a voxel (a box of voxels around it), so a slight overestimate.

Voids are the 6-connected components of outside voxels not connected to the volume's
border; their volume is their voxels times the voxel volume (mm³; the level lies on the
voids' surfaces, so the half-voxel errors of their boundary cancel to about a percent).
Shells are the connected parts of the final mesh (each a closed surface: a body's outside,
or a void's or hollow's inside).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numba
import numpy as np

from dicomstl.settings import PrintTargets
from gpu_worker import distance
from gpu_worker import mesh as meshops

#: How many void volumes the report lists (the largest).
LISTED_VOIDS = 5


@dataclass
class PrintMask:
    """The final mask, cropped: ``mask`` (bool, [k, j, i]) starts at voxel ``offset_kji`` of
    the volume; ``spacing`` (slice, row, column) mm; ``affine`` voxel (i, j, k, 1) to LPS."""

    mask: np.ndarray
    offset_kji: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    voxel_mm3: float


def print_mask(inside: np.ndarray, geometry) -> PrintMask:
    """The cropped mask of ``inside`` (bool, host) for the report, with one voxel of outside
    kept around it where the volume allows."""
    box = distance.bounding_box(inside)
    return PrintMask(np.ascontiguousarray(inside[box]), tuple(s.start for s in box),
                     distance.mask_spacing(geometry), geometry.affine,
                     geometry.voxel_volume_mm3)


@dataclass
class PrintReport:
    """Walls (mm), shells and voids (mm³), bed fits, material (cm³, g)."""

    min_wall_mm: float | None
    p1_wall_mm: float | None
    wall_threshold_mm: float
    thin_area_mm2: float
    shells: int
    voids: int
    void_total_mm3: float
    largest_voids_mm3: list[float]
    beds: list[dict]
    volume_cm3: float
    grams: dict[str, float]
    grid_mm: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    #: what filling and hollowing did (``hollow.Changes.as_dict``), None for a plain solid
    solid_or_hollow: dict | None = None

    def as_dict(self) -> dict:
        return {
            "walls": {"min_mm": self.min_wall_mm, "p1_mm": self.p1_wall_mm,
                      "threshold_mm": self.wall_threshold_mm,
                      "thin_area_mm2": self.thin_area_mm2,
                      "method": "distance transform: 2 x inscribed-ball radius on the medial "
                                "ridge, within one voxel"},
            "shells": self.shells,
            "voids": {"count": self.voids, "total_mm3": self.void_total_mm3,
                      "largest_mm3": self.largest_voids_mm3},
            "beds": self.beds,
            "material": {"volume_cm3": self.volume_cm3, "grams": self.grams},
            "solid_or_hollow": self.solid_or_hollow,
            "grid_mm": list(self.grid_mm), "notes": self.notes,
        }


def bed_fit(size_mm: tuple[float, float, float], bed_mm: tuple[float, float, float]) -> dict:
    """How a model of ``size_mm`` (LPS x, y, z extent) fits a bed of ``bed_mm`` (x, y, z):
    "fits" as it lies, "fits rotated" in some other axis order, else "scale needed" with
    ``scale`` the largest factor (< 1) at which it fits in the best axis order."""
    size = np.asarray(size_mm, float)
    bed = np.asarray(bed_mm, float)
    if np.all(size <= bed):
        return {"bed_mm": list(bed_mm), "fit": "fits", "scale": None}
    best = min(float(np.max(size[list(p)] / bed)) for p in permutations(range(3)))
    if best <= 1.0:
        return {"bed_mm": list(bed_mm), "fit": "fits rotated", "scale": None}
    return {"bed_mm": list(bed_mm), "fit": "scale needed",
            "scale": float(np.floor(1000.0 / best) / 1000.0)}


@numba.njit(parallel=True, cache=True, nogil=True)
def _ridge(depth):  # pragma: no cover - compiled
    """True where depth > 0 is not below any of its 26 neighbours (outside the array: 0)."""
    nk, nj, ni = depth.shape
    out = np.zeros(depth.shape, np.bool_)
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                d = depth[k, j, i]
                if d <= 0:
                    continue
                top = True
                for dk in range(-1, 2):
                    kk = k + dk
                    if kk < 0 or kk >= nk:
                        continue
                    for dj in range(-1, 2):
                        jj = j + dj
                        if jj < 0 or jj >= nj:
                            continue
                        for di in range(-1, 2):
                            ii = i + di
                            if ii < 0 or ii >= ni:
                                continue
                            if depth[kk, jj, ii] > d:
                                top = False
                out[k, j, i] = top
    return out


def wall_thickness(mask: np.ndarray, spacing: tuple[float, float, float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The ridge voxels (bool, like ``mask``) and their local thickness (mm, float32) in
    raster order: ``2 * D - min(spacing) / 2`` (see the module's notes)."""
    depth = distance.distance_mm(mask, spacing)
    ridge = _ridge(depth)
    thickness = 2.0 * depth[ridge] - np.float32(min(spacing) / 2.0)
    return ridge, thickness


def thin_area_mm2(mesh: meshops.Mesh, pm: PrintMask, thin: np.ndarray,
                  reach_mm: float) -> float:
    """Area (mm²) of the triangles of ``mesh`` whose centroid lies within ``reach_mm`` plus
    one voxel (per axis, a box) of a voxel in ``thin`` (bool, like ``pm.mask``)."""
    if not thin.any() or len(mesh.faces) == 0:
        return 0.0
    radii = np.array([int(np.ceil(reach_mm / s)) + 1 for s in pm.spacing], np.int64)
    zone = _boxes(np.argwhere(thin), radii, thin.shape)
    inverse = np.linalg.inv(pm.affine)
    return float(_area_in_zone(np.ascontiguousarray(mesh.vertices),
                               np.ascontiguousarray(mesh.faces), inverse,
                               np.asarray(pm.offset_kji, np.int64), zone))


@numba.njit(cache=True, nogil=True)
def _boxes(points, radii, shape):  # pragma: no cover - compiled
    """uint8 array of ``shape``: 1 within ``radii`` (k, j, i voxels) of any of ``points``."""
    zone = np.zeros(shape, np.uint8)
    for p in range(points.shape[0]):
        k0, j0, i0 = points[p, 0], points[p, 1], points[p, 2]
        for k in range(max(k0 - radii[0], 0), min(k0 + radii[0] + 1, shape[0])):
            for j in range(max(j0 - radii[1], 0), min(j0 + radii[1] + 1, shape[1])):
                for i in range(max(i0 - radii[2], 0), min(i0 + radii[2] + 1, shape[2])):
                    zone[k, j, i] = 1
    return zone


@numba.njit(parallel=True, cache=True, nogil=True)
def _area_in_zone(vertices, faces, inverse, offset, zone):  # pragma: no cover - compiled
    """Sum of the areas (mm²) of the triangles whose centroid's nearest voxel (through the
    LPS-to-index ``inverse`` affine, less ``offset`` k, j, i) is nonzero in ``zone``."""
    nk, nj, ni = zone.shape
    total = 0.0
    for t in numba.prange(faces.shape[0]):
        a = vertices[faces[t, 0]].astype(np.float64)
        b = vertices[faces[t, 1]].astype(np.float64)
        c = vertices[faces[t, 2]].astype(np.float64)
        m = (a + b + c) / 3.0
        idx = np.empty(3, np.int64)
        for r in range(3):
            x = inverse[r, 3]
            for q in range(3):
                x += inverse[r, q] * m[q]
            idx[r] = np.int64(np.rint(x))
        k = idx[2] - offset[0]
        j = idx[1] - offset[1]
        i = idx[0] - offset[2]
        if k < 0 or j < 0 or i < 0 or k >= nk or j >= nj or i >= ni or zone[k, j, i] == 0:
            continue
        u = b - a
        v = c - a
        cx = u[1] * v[2] - u[2] * v[1]
        cy = u[2] * v[0] - u[0] * v[2]
        cz = u[0] * v[1] - u[1] * v[0]
        total += 0.5 * np.sqrt(cx * cx + cy * cy + cz * cz)
    return total


def printability(pm: PrintMask, mesh: meshops.Mesh, mesh_report: meshops.MeshReport,
                 min_wall_mm: float, targets: PrintTargets) -> PrintReport:
    """The report for the final mask ``pm`` and the final ``mesh`` (LPS mm) with its
    ``mesh_report``; ``min_wall_mm``: the thin-wall threshold (mm); ``targets``: printer
    beds (mm) and material densities (g/cm³)."""
    notes = []
    if pm.mask.any():
        ridge, thickness = wall_thickness(pm.mask, pm.spacing)
        min_wall = round(float(thickness.min()), 3)
        p1_wall = round(float(np.percentile(thickness, 1)), 3)
        thin = np.zeros(pm.mask.shape, bool)
        thin[ridge] = thickness < min_wall_mm
        area = round(thin_area_mm2(mesh, pm, thin, min_wall_mm / 2.0), 1)
        labels, n_voids = distance.internal_voids(pm.mask)
        sizes = np.bincount(labels.ravel(), minlength=n_voids + 1)[1:] * pm.voxel_mm3
    else:
        min_wall = p1_wall = None
        area, n_voids, sizes = 0.0, 0, np.zeros(0)
    if max(pm.spacing) > min_wall_mm:
        notes.append(f"the voxels ({' x '.join(f'{s:.2f}' for s in pm.spacing)} mm) are "
                     f"coarser than the {min_wall_mm:g} mm wall threshold: walls are measured "
                     "to within one voxel")
    volume = float(mesh_report.volume_cm3)
    return PrintReport(
        min_wall_mm=min_wall, p1_wall_mm=p1_wall, wall_threshold_mm=min_wall_mm,
        thin_area_mm2=area, shells=int(mesh_report.parts), voids=int(n_voids),
        void_total_mm3=round(float(sizes.sum()), 1),
        largest_voids_mm3=[round(float(v), 1) for v in np.sort(sizes)[::-1][:LISTED_VOIDS]],
        beds=[bed_fit(mesh_report.size_mm, bed) for bed in targets.beds_mm],
        volume_cm3=round(volume, 3),
        grams={name: round(volume * density, 1) for name, density in
               targets.densities_g_cm3.items()},
        grid_mm=tuple(round(s, 4) for s in pm.spacing), notes=notes)
