"""Group and sort frames into series, and choose one.

``find_series`` groups 2-D frames into stacks, ``choose_series`` picks one, and
``geometry_of`` gives a stack's geometry (:mod:`gpu_worker.geometry`).

Rules, after DICOM PS3.3 C.7.6.2 (Image Plane): frames group by SeriesInstanceUID, then by
orientation and size (so a localizer in the same series becomes its own stack); slices are
ordered by their position along the slice normal, never by InstanceNumber or file name; when
every position repeats the same number of times the stack is 4-D (time points), and one time
point is taken. Nothing here logs or returns patient data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from dicomstl.errors import SeriesChoiceError, SeriesGeometryError
from gpu_worker.dicom_headers import MAX_VOXELS, Frame, Scan, too_many_voxels
from gpu_worker.geometry import Geometry

#: A gap larger than this many times the median slice spacing is reported.
GAP_FACTOR = 1.5
#: Direction cosines closer than this belong to one orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Positions closer than this along the normal (mm) are the same slice position.
POSITION_TOLERANCE_MM = 1e-3



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
    plane: str = ""  # "axial", "sagittal", "coronal" or "oblique": the slices' orientation

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
                "spacing_mm": [float(v) for v in self.spacing_mm], "plane": self.plane}

    def summary(self) -> str:
        """One line for users: modality, description, slices, size, spacing (no patient data)."""
        sx, sy, sz = self.spacing_mm
        time = f", {self.time_points} time points" if self.time_points > 1 else ""
        text = (f"{self.uid}: {self.modality} '{self.description}', {self.plane}, "
                f"{self.positions} slices"
                f"{time}, {self.cols}x{self.rows}x{self.positions} voxels, "
                f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm")
        return text + (f" (not usable: {self.problem})" if self.problem else "")


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


def plane_of(normal: np.ndarray) -> str:
    """The anatomical plane of slices with this LPS normal; "oblique" when the normal is
    more than 30 degrees from every axis."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(30)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


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
                        time_points=int(counts[0]), plane=plane_of(normal))
    positions = along[new_position]
    step = float(np.median(np.diff(positions))) if n_pos > 1 else 0.0
    stack.spacing_mm = (first.spacing_ij[0], first.spacing_ij[1], step)
    if n_pos < 2:
        stack.problem = ("a single slice position, not a volume" if len(frames) == 1 else
                         f"{len(frames)} images all at one position, not a volume")
    elif not (counts == counts[0]).all():
        stack.problem = (f"duplicate slice positions ({int((counts > 1).sum())} positions "
                         "repeat, unevenly); the series is incomplete or mixes acquisitions")
    elif stack.voxels > MAX_VOXELS:  # refused before a pixel is decoded or allocated
        stack.problem = "too large: " + too_many_voxels(stack.cols, stack.rows, n_pos)
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
