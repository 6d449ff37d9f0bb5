"""The conversion, stage by stage and timed:
read -> decode -> volume -> smooth -> islands -> cavities -> surface -> decimate ->
mesh-smooth -> check -> printability -> write.

Each stage is a function of :mod:`gpu_worker` with typed input and output, its arrays on the
conversion's engine (``engines``); this module only strings them together, times them and
reports progress, the same for every engine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dicomstl.errors import ConversionError, EmptySurfaceError
from dicomstl.options import PRESETS, Options, Segment
from dicomstl.settings import PrintTargets
from gpu_worker import decimation, decode, dicom_headers, hollow, printability
from gpu_worker import mesh as meshops
from gpu_worker import series as ser
from gpu_worker import volume as vol
from gpu_worker.engines import Engine, resolve_backend
from gpu_worker.marching import effective_level
from gpu_worker.sources import collect_sources
from gpu_worker.stl import stl_zip_bytes, threemf_parts_bytes, write_bytes, write_mesh

log = logging.getLogger(__name__)

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
    printability: printability.PrintReport | None = None
    #: A multi-segment job's models, in the order given (None without segments); ``report``
    #: is then all of them together, and ``level`` the first one's.
    segments: list[SegmentResult] | None = None

    def as_dict(self) -> dict:
        out = {"output": self.output.name, "bytes": self.bytes_written,
               "mesh": self.report.as_dict(), "series": self.series, "level": self.level,
               "level_source": self.level_source, "backend": self.backend,
               "volume_shape_kji": list(self.shape),
               "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
               "warnings": self.warnings,
               "printability": self.printability.as_dict() if self.printability else None}
        if self.segments is not None:
            out["segments"] = [segment.as_dict() for segment in self.segments]
        return out


@dataclass
class SegmentResult:
    """One segment's model: its name, colour ("#rrggbb"), threshold and reports."""

    name: str
    color: str
    level: float
    level2: float | None
    level_source: str
    report: meshops.MeshReport
    printability: printability.PrintReport | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "color": self.color, "level": self.level,
                "level2": self.level2, "level_source": self.level_source,
                "mesh": self.report.as_dict(),
                "printability": self.printability.as_dict() if self.printability else None}


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
        # a multi-segment job runs the mesh stages once per segment: their times add up
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if self.progress:
            self.progress(name, "done")


def inspect(inputs: Sequence[str | os.PathLike]
            ) -> tuple[dicom_headers.Scan, list[ser.SeriesStack]]:
    """The series in an input, for listing (no pixel data is decoded)."""
    found = dicom_headers.scan(collect_sources(inputs))
    dicom_headers.require_images(found)
    return found, ser.find_series(found)


def segment_level(volume: vol.Volume, segment: Segment) -> tuple[float, bool, str]:
    """(level, invert, where it came from) of one segment (its band's lower end)."""
    if segment.preset is None:
        return float(segment.level), False, "level" if segment.level2 is None else "band"
    preset = PRESETS[segment.preset]
    if volume.units != "HU":
        raise ConversionError(f"segment {segment.name!r}: the preset '{preset.name}' is in "
                              f"Hounsfield units, but this is a {volume.modality} series; "
                              "give a level instead")
    return preset.level, preset.invert, f"preset {preset.name}"


def read_series(inputs: Sequence[str | os.PathLike], options: Options, timer: _Timer
                ) -> tuple[ser.SeriesStack, decode.DecodedSeries]:
    """The "read" and "decode" stages: the series ``options.series`` picks, and its pixels
    at ``options.time_point``."""
    with timer.stage("read"):
        found, stacks = inspect(inputs)
        stack = ser.choose_series(stacks, options.series)
    with timer.stage("decode"):
        decoded = decode.decode_series(found, stack, options.time_point)
    return stack, decoded


def choose_level(volume: vol.Volume, options: Options,
                 engine: Engine) -> tuple[float, bool, str]:
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
    # on the host, so both engines interpolate the percentile alike
    level = float(0.25 * np.percentile(engine.to_host(volume.data), 99))
    return level, False, "automatic: 25% of the 99th percentile (give --level to choose)"


def convert(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
            options: Options | None = None, progress: Progress | None = None,
            engine: Engine | None = None, targets: PrintTargets | None = None) -> Result:
    """Convert the DICOM series in ``inputs`` to a closed mesh written to ``output``.

    Vertices are in patient LPS millimetres. ``engine``: default, the one ``options.backend``
    names. ``targets``: the printer beds and material densities of the printability report
    (default: ``PrintTargets()``, the settings' defaults). Raises ConversionError (a message
    for the user) for any problem with the input or the options.
    """
    options = options or Options()
    options.validate()
    out = Path(output)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ConversionError(f"cannot write {out.name}: its folder does not exist or is not "
                              "writable")
    engine = engine or resolve_backend(options.backend)
    timer = _Timer(progress)
    stack, decoded = read_series(inputs, options, timer)
    run = engine.for_volume(decoded.pixels.shape, options)
    try:
        return _finish(decoded, stack, options, out, timer, run, targets or PrintTargets())
    except Exception as exc:
        fallback = run.fallback(exc)
        if fallback is None:
            raise
    return _finish(decoded, stack, options, out, timer, fallback, targets or PrintTargets())


def _finish(decoded: decode.DecodedSeries, stack: ser.SeriesStack, options: Options, out: Path,
            timer: _Timer, engine: Engine, targets: PrintTargets) -> Result:
    """The stages after decoding: volume, smooth, islands, surface, ..., write; with
    segments, the stages from islands to printability once per segment."""
    with timer.stage("volume"):
        # downsampling averages on the host: then the volume goes to the engine after it
        on_host = options.downsample > 1
        if not on_host:
            decoded = replace(decoded, pixels=engine.to_device(decoded.pixels))
        xp = np if on_host else engine.xp
        volume = vol.to_volume(decoded, xp)
        if options.crop:
            volume = vol.crop(volume, vol.parse_crop(options.crop, volume.data.shape), xp)
        volume = vol.downsample(volume, options.downsample)
        volume = replace(volume, data=engine.to_device(volume.data))
        if options.segments:
            levels = [segment_level(volume, segment) for segment in options.segments]
            level, _invert, level_source = levels[0]
        else:
            level, invert, level_source = choose_level(volume, options, engine)
    with timer.stage("smooth"):
        volume = engine.smooth(volume, options.smooth_mm)
    warnings = list(volume.warnings)
    if options.segments:
        return _finish_segments(volume, levels, stack, options, out, timer, engine, targets,
                                warnings)
    mesh, report, printable = _model(volume, level, invert, None, options, timer, engine,
                                     targets, warnings)
    with timer.stage("write"):
        written = (write_bytes(engine.pack_stl(mesh), out) if options.format == "stl"
                   else write_mesh(mesh, out, options.format))
    return Result(output=out, bytes_written=written, report=report, series=stack.summary(),
                  level=level, level_source=level_source, backend=engine.name,
                  shape=tuple(volume.data.shape), timings_s=timer.timings, warnings=warnings,
                  printability=printable)


def _finish_segments(volume: vol.Volume, levels: list[tuple[float, bool, str]],
                     stack: ser.SeriesStack, options: Options, out: Path, timer: _Timer,
                     engine: Engine, targets: PrintTargets, warnings: list[str]) -> Result:
    """The stages from islands to printability for each segment (its own mask: a level, or
    the band ``level <= value < level2``), then one file: a 3MF of one named, coloured
    object per segment, or a zip of one STL per segment."""
    parts = []
    chosen = zip(options.segments, levels, strict=True)
    for index, (segment, (level, invert, source)) in enumerate(chosen):
        notes: list[str] = []
        try:
            mesh, report, printable = _model(volume, level, invert, segment.level2, options,
                                             timer, engine, targets, notes)
        except EmptySurfaceError as exc:
            band = segment.level2 is not None and str(exc).startswith("no voxel")
            raise EmptySurfaceError(f"segment {segment.name!r}: " + (
                f"no voxel lies in the band {level:g} to {segment.level2:g}; choose another "
                "range" if band else str(exc))) from None
        warnings.extend(f"segment {segment.name}: {note}" for note in notes)
        parts.append((mesh, SegmentResult(
            name=segment.name, color=segment.color_or_default(index), level=level,
            level2=None if segment.level2 is None else float(segment.level2),
            level_source=source, report=report, printability=printable)))
    with timer.stage("write"):
        if options.format == "3mf":
            data = threemf_parts_bytes([(s.name, s.color, mesh) for mesh, s in parts])
        else:
            data = stl_zip_bytes([(s.name, mesh) for mesh, s in parts], options.format)
        written = write_bytes(data, out)
    results = [s for _mesh, s in parts]
    return Result(output=out, bytes_written=written,
                  report=meshops.combined_report([s.report for s in results]),
                  series=stack.summary(), level=levels[0][0], level_source=levels[0][2],
                  backend=engine.name, shape=tuple(volume.data.shape),
                  timings_s=timer.timings, warnings=warnings, segments=results)


def _model(volume: vol.Volume, level: float, invert: bool, level2: float | None,
           options: Options, timer: _Timer, engine: Engine, targets: PrintTargets,
           warnings: list[str]
           ) -> tuple[meshops.Mesh, meshops.MeshReport, printability.PrintReport | None]:
    """The stages from islands to printability for one mask: ``value >= level`` (``< level``
    with ``invert``), or the band ``level <= value < level2``. The checked mesh (LPS mm), its
    report and the printability report (None when it is not asked for)."""
    with timer.stage("islands"):
        if level2 is None:
            data, oriented_level = vol.oriented(volume.data, level, invert)
        else:
            data, oriented_level = vol.band(volume.data, level, level2, engine.xp)
        threshold = effective_level(data, oriented_level)
        data, _parts = engine.keep_parts(data, threshold, options.keep, options.min_part_mm3,
                                         volume.geometry.voxel_volume_mm3,
                                         drop_in_plane_border=invert)
    with timer.stage("cavities"):
        data, print_mask, changes = _solid_or_hollow(data, threshold, volume.geometry,
                                                     options, engine, warnings)
    with timer.stage("surface"):
        mesh = engine.iso_surface(data, threshold, volume.geometry)
        del data
    with timer.stage("decimate"):
        mesh, warning = decimation.decimate(mesh, options.decimate, options.max_triangles)
        if warning:
            warnings.append(warning)
    with timer.stage("mesh-smooth"):
        mesh = meshops.taubin_smooth(mesh, options.mesh_smooth)
    with timer.stage("check"):
        report = engine.check(mesh)
    if not report.watertight:  # a bug, never a user error: refuse to write a broken model
        raise RuntimeError(f"internal error: the mesh is not closed ({report.boundary_edges} "
                           f"open, {report.non_manifold_edges} non-manifold edges)")
    with timer.stage("printability"):
        printable = None
        if print_mask is not None:
            printable = printability.printability(print_mask, mesh, report,
                                                  options.min_wall_mm, targets)
            if changes is not None:
                printable.solid_or_hollow = changes.as_dict(volume.geometry.voxel_volume_mm3)
    return mesh, report, printable


def _solid_or_hollow(data, threshold: float, geometry, options: Options, engine: Engine,
                     warnings: list[str]
                     ) -> tuple[object, printability.PrintMask | None, hollow.Changes | None]:
    """The "cavities" stage: fill voids, hollow, drain holes (``hollow``), on the host for
    both engines; returns the engine's data, the final mask for the printability report
    (None without the report) and what changed (None when the options keep the model as
    it is)."""
    changes = None
    if not (options.printability or options.fill_cavities or options.hollow_mm > 0):
        return data, None, None  # nothing to do on the host: the volume stays where it is
    host = engine.to_host(data)
    if options.fill_cavities or options.hollow_mm > 0:
        host, changes = hollow.solid_or_hollow(host, threshold, geometry,
                                               options.fill_cavities, options.hollow_mm,
                                               options.drain_holes, options.drain_hole_mm)
        warnings.extend(changes.notes or [])
        data = engine.to_device(host)
    mask = printability.print_mask(host >= threshold, geometry) if options.printability else None
    return data, mask, changes
