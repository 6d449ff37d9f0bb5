"""The conversion, stage by stage and timed:
read -> decode -> volume -> smooth -> islands -> surface -> decimate -> mesh-smooth ->
check -> write.

Each stage is a function of :mod:`gpu_worker` with typed input and output; this module only
strings them together, times them and reports progress.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicomstl.errors import ConversionError
from gpu_worker import mesh as meshops
from gpu_worker import series as ser
from gpu_worker import volume as vol
from gpu_worker.backend import resolve_backend
from gpu_worker.marching import effective_level, marching_cubes
from gpu_worker.options import Options
from gpu_worker.presets import PRESETS
from gpu_worker.sources import collect_sources
from gpu_worker.stl import write_mesh

#: progress(stage, state) with state "start" or "done".
Progress = Callable[[str, str], None]


@dataclass
class Result:
    """The outcome of a conversion: the report plus where the model went."""

    output: Path
    bytes_written: int
    report: meshops.MeshReport
    series: str
    level: float
    level_source: str
    backend: str
    shape: tuple[int, int, int]
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"output": self.output.name, "bytes": self.bytes_written,
                "mesh": self.report.as_dict(), "series": self.series, "level": self.level,
                "level_source": self.level_source, "backend": self.backend,
                "volume_shape_kji": list(self.shape),
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
                "warnings": self.warnings}


class _Timer:
    def __init__(self, progress: Progress | None):
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(name, "start")
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        if self.progress:
            self.progress(name, "done")


def inspect(inputs: Sequence[str | os.PathLike]) -> tuple[ser.Scan, list[ser.SeriesStack]]:
    """The series in an input, for listing (no pixel data is decoded)."""
    found = ser.scan(collect_sources(inputs))
    ser.require_images(found)
    return found, ser.find_series(found)


def choose_level(volume: vol.Volume, options: Options) -> tuple[float, bool, str]:
    """(level, invert, where it came from) for a volume and the user's options."""
    if options.level is not None:
        return float(options.level), False, "level"
    if options.preset is not None:
        preset = PRESETS[options.preset]
        if volume.units != "HU":
            raise ConversionError(f"the preset '{preset.name}' is in Hounsfield units, but "
                                  f"this is a {volume.modality} series; give --level instead")
        return preset.level, preset.invert, f"preset {preset.name}"
    if volume.units == "HU":
        return PRESETS["bone"].level, False, "preset bone (default for CT)"
    level = float(0.25 * np.percentile(volume.data, 99))
    return level, False, "automatic: 25% of the 99th percentile (give --level to choose)"


def convert(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
            options: Options | None = None, progress: Progress | None = None) -> Result:
    """Convert the DICOM series in ``inputs`` to a closed mesh written to ``output``.

    Vertices are in patient LPS millimetres. Raises ConversionError (a message for the user)
    for any problem with the input or the options.
    """
    options = options or Options()
    options.validate()
    out = Path(output)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ConversionError(f"cannot write {out.name}: its folder does not exist or is not "
                              "writable")
    backend = resolve_backend(options.backend)
    timer = _Timer(progress)
    with timer.stage("read"):
        found, stacks = inspect(inputs)
        stack = ser.choose_series(stacks, options.series)
    with timer.stage("decode"):
        decoded = ser.decode_series(found, stack, options.time_point)
    with timer.stage("volume"):
        volume = vol.to_volume(decoded)
        if options.crop:
            volume = vol.crop(volume, vol.parse_crop(options.crop, volume.data.shape))
        volume = vol.downsample(volume, options.downsample)
        level, invert, level_source = choose_level(volume, options)
    with timer.stage("smooth"):
        volume = vol.smooth(volume, options.smooth_mm)
    with timer.stage("islands"):
        data, oriented_level = vol.oriented(volume.data, level, invert)
        threshold = effective_level(data, oriented_level)
        data, _parts = vol.keep_parts(data, threshold, options.keep, options.min_part_mm3,
                                      volume.geometry.voxel_volume_mm3,
                                      drop_in_plane_border=invert)
    with timer.stage("surface"):
        index_mesh = marching_cubes(data, threshold)
        vertices = volume.geometry.to_lps(index_mesh.vertices).astype(np.float32)
        faces = index_mesh.faces
        if not volume.geometry.is_right_handed:
            faces = faces[:, ::-1].copy()  # the index frame is mirrored: keep normals outward
        mesh = meshops.Mesh(vertices, faces)
        del data, index_mesh
    warnings = list(volume.warnings)
    with timer.stage("decimate"):
        mesh, warning = meshops.decimate(mesh, options.decimate, options.max_triangles)
        if warning:
            warnings.append(warning)
    with timer.stage("mesh-smooth"):
        mesh = meshops.taubin_smooth(mesh, options.mesh_smooth)
    with timer.stage("check"):
        report = meshops.report(mesh)
    if not report.watertight:  # a bug, never a user error: refuse to write a broken model
        raise RuntimeError(f"internal error: the mesh is not closed ({report.boundary_edges} "
                           f"open, {report.non_manifold_edges} non-manifold edges)")
    with timer.stage("write"):
        written = write_mesh(mesh, out, options.format)
    return Result(output=out, bytes_written=written, report=report, series=stack.summary(),
                  level=level, level_source=level_source, backend=backend,
                  shape=tuple(volume.data.shape), timings_s=timer.timings, warnings=warnings)
