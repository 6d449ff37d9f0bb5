"""The ``dicomstl`` command: ``convert`` a series to a mesh, ``inspect`` what an input holds;
the service's commands (``up``, ``serve``, ``worker``, ``submit``, …) are in
``service_commands``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicomstl import __version__
from dicomstl.errors import ConfigError, ConversionError
from dicomstl.options import (
    BACKENDS,
    FORMATS,
    LIMITS,
    MAX_KEEP,
    PRESETS,
    STAGES,
    Options,
    Segment,
    parse_segment,
)
from dicomstl.settings import load_settings
from dicomstl_cli.service_commands import SERVICE_COMMANDS, add_commands, run

err = Console(stderr=True)
out = Console()


def _level(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level must be a number, not {text!r}") from None


def _segment(text: str) -> Segment:
    try:
        return parse_segment(text)
    except ConversionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _range(name: str) -> str:
    """The accepted range of an option, for its help text."""
    low, high, _unit = LIMITS[name]
    return f" ({low:,.12g} to {high:,.12g})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomstl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicomstl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show internal details of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a DICOM series to STL/3MF",
                       description="Convert a DICOM series (folder, files or .zip) to a closed "
                                   "mesh in patient LPS millimetres.")
    c.add_argument("inputs", nargs="+", help="folder(s), DICOM file(s) or .zip archive(s)")
    c.add_argument("-o", "--output", required=True, help="output file (.stl or .3mf)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="CT threshold preset: " + "; ".join(
                       f"{p.name} = {p.description}" for p in PRESETS.values()))
    g.add_argument("--level", type=_level, help="threshold in HU (CT) or stored units (MR)"
                   + _range("level"))
    c.add_argument("--segment", dest="segments", action="append", type=_segment, default=[],
                   metavar="NAME=PRESET|LEVEL[:LEVEL2][,color=#rrggbb]",
                   help="a model of its own (repeatable, instead of --preset/--level): a "
                        "preset, a level, or the band LEVEL:LEVEL2; written as one named, "
                        "coloured object each in a .3mf, or one STL each in a .zip")
    c.add_argument("--series", help="SeriesInstanceUID to convert, or 'largest'")
    c.add_argument("--time-point", type=int, default=0,
                   help="time point of a 4-D series (default 0, the first)"
                   + _range("time_point"))
    c.add_argument("--crop", help="voxel ranges columns,rows,slices, e.g. 100:400,50:450,0:")
    c.add_argument("--downsample", type=int, default=1,
                   help="average blocks of N^3 voxels" + _range("downsample"))
    c.add_argument("--smooth-mm", type=float, default=0.0,
                   help="Gaussian smoothing of the volume, standard deviation in mm"
                   + _range("smooth_mm"))
    c.add_argument("--keep", default="all",
                   help=f"parts to keep: all, largest, or N (the N largest, 1 to {MAX_KEEP:,})")
    c.add_argument("--min-part-mm3", type=float, default=0.0,
                   help="drop parts smaller than this volume (mm^3)" + _range("min_part_mm3"))
    d = c.add_mutually_exclusive_group()
    d.add_argument("--decimate", type=float,
                   help="fraction of triangles to remove (0 up to, not including, 1)")
    d.add_argument("--max-triangles", type=int,
                   help="triangle budget" + _range("max_triangles"))
    c.add_argument("--mesh-smooth", type=int, default=0,
                   help="Taubin smoothing iterations (keeps the volume)"
                   + _range("mesh_smooth"))
    p = c.add_argument_group("printing", "solid or hollow, and the printability report")
    p.add_argument("--fill-cavities", action="store_true",
                   help="fill internal voids (closed chambers) before meshing: one shell")
    p.add_argument("--hollow-mm", type=float, default=0.0, metavar="T",
                   help="hollow the model, keeping a wall of T mm (Euclidean distance "
                        "transform); 0: solid" + _range("hollow_mm"))
    p.add_argument("--drain-holes", type=int, default=0, metavar="N",
                   help="N drain holes from the hollow's lowest points (towards the feet, "
                        "-S) through its wall" + _range("drain_holes"))
    p.add_argument("--drain-hole-mm", type=float, default=3.0, metavar="D",
                   help="drain hole diameter in mm (default 3)" + _range("drain_hole_mm"))
    p.add_argument("--min-wall-mm", type=float, default=0.8, metavar="W",
                   help="walls thinner than this are reported as thin (default 0.8)"
                   + _range("min_wall_mm"))
    p.add_argument("--no-printability", dest="printability", action="store_false",
                   help="skip the printability report (walls, shells, beds, material: "
                        "about 0.5 s on a head CT)")
    c.add_argument("--format", choices=FORMATS, default=None,
                   help="stl (binary, default), stl-ascii or 3mf (default from the suffix)")
    c.add_argument("--backend", choices=BACKENDS, default="auto")
    c.add_argument("--gpu-memory-budget", type=int, default=0, metavar="BYTES",
                   help="GPU memory one conversion may use (default: 80%% of what is free)")
    c.add_argument("--report", help="write the mesh report as JSON to this file")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    i = sub.add_parser("inspect", help="list the series an input holds (no patient data)")
    i.add_argument("inputs", nargs="+")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    add_commands(sub)
    return parser


@contextmanager
def _stage_progress(quiet: bool) -> Iterator:
    """A progress(stage, state) callback: bars on a terminal, else one line per stage
    (a log or a CI job gets no redraws), nothing with --quiet."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        started: dict[str, float] = {}

        def line(stage: str, state: str) -> None:
            if state == "start":
                started[stage] = time.perf_counter()
            else:
                err.print(f"{stage} done in {time.perf_counter() - started[stage]:.2f} s",
                          highlight=False)

        yield line
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        tasks = {s: bar.add_task(s, total=1, start=False) for s in STAGES}

        def progress(stage: str, state: str) -> None:
            if state == "start":
                bar.start_task(tasks[stage])
            else:
                bar.update(tasks[stage], completed=1)

        yield progress


def _convert(args: argparse.Namespace) -> int:
    from gpu_worker.engines import resolve_backend
    from gpu_worker.kernel_cache import kernel_words
    from gpu_worker.pipeline import convert

    fmt = args.format or ("3mf" if args.output.lower().endswith(".3mf") else "stl")
    options = Options(preset=args.preset, level=args.level, series=args.series,
                      time_point=args.time_point, crop=args.crop, downsample=args.downsample,
                      smooth_mm=args.smooth_mm, keep=args.keep, min_part_mm3=args.min_part_mm3,
                      decimate=args.decimate, max_triangles=args.max_triangles,
                      mesh_smooth=args.mesh_smooth, format=fmt, backend=args.backend,
                      gpu_memory_budget=args.gpu_memory_budget, min_wall_mm=args.min_wall_mm,
                      printability=args.printability,
                      fill_cavities=args.fill_cavities, hollow_mm=args.hollow_mm,
                      drain_holes=args.drain_holes, drain_hole_mm=args.drain_hole_mm,
                      segments=tuple(args.segments))
    options.validate()  # before the progress bars: a bad option is one line, no bars
    if args.segments and fmt != "3mf" and not args.output.lower().endswith(".zip"):
        raise ConversionError("segments are written as a .3mf (one object each) or a .zip "
                              "(one STL each): name the output so")
    engine = resolve_backend(options.backend)
    warm = engine.warm_up()  # the kernels, from the disk cache except after an install
    with _stage_progress(args.quiet) as progress:
        result = convert(args.inputs, args.output, options, progress, engine=engine,
                         targets=load_settings(prepare=False).print_targets)
    r = result.report
    # Text that comes from data or the file system is escaped: "[...]" is rich markup.
    out.print(f"[bold green]wrote[/] {escape(str(result.output))} "
              f"({result.bytes_written / 1e6:.1f} MB, {options.format})")
    out.print(f"series: {escape(result.series)}")
    out.print(f"level: {result.level:g} ({escape(result.level_source)}); "
              f"backend: {result.backend}")
    out.print(f"triangles {r.triangles:,}, vertices {r.vertices:,}, area "
              f"{r.surface_area_mm2:,.0f} mm², volume {r.volume_cm3:,.2f} cm³, parts {r.parts}, "
              f"watertight {'yes' if r.watertight else 'NO'}")
    out.print("size (LPS mm): " + " x ".join(f"{s:.1f}" for s in r.size_mm))
    for segment in result.segments or ():
        m = segment.report
        out.print(f"segment {escape(segment.name)} ({escape(segment.level_source)}): "
                  f"triangles {m.triangles:,}, volume {m.volume_cm3:,.2f} cm³, parts {m.parts}, "
                  "size " + " x ".join(f"{s:.1f}" for s in m.size_mm) + " mm", highlight=False)
        if segment.printability:
            for line in printability_lines(segment.printability.as_dict()):
                out.print(f"  {line}", highlight=False)
    if result.printability:
        for line in printability_lines(result.printability.as_dict()):
            out.print(line, highlight=False)
    out.print(f"time: kernels {warm['seconds']:.2f}s, "
              + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items())
              + f" ({kernel_words(warm['kernels'])})")
    for note in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(note)}")
    if args.report:
        Path(args.report).write_text(json.dumps(result.as_dict(), indent=2))
    return 0


def printability_lines(p: dict) -> list[str]:
    """The printability report (``Result.as_dict()["printability"]``) in a few lines."""
    walls, voids = p["walls"], p["voids"]
    if walls["min_mm"] is None:
        wall = "walls: none measured"
    else:
        wall = (f"walls: thinnest {walls['min_mm']:.2f} mm, 1st percentile "
                f"{walls['p1_mm']:.2f} mm; {walls['thin_area_mm2']:,.0f} mm² of surface "
                f"below {walls['threshold_mm']:g} mm")
    shells = f"shells: {p['shells']}, internal voids: {voids['count']}"
    if voids["count"]:
        shells += (f" ({voids['total_mm3']:,.1f} mm³ in all; largest "
                   + ", ".join(f"{v:,.1f}" for v in voids["largest_mm3"]) + " mm³)")
    beds = "beds: " + "; ".join(
        "x".join(f"{x:g}" for x in b["bed_mm"]) + " mm "
        + (b["fit"] if b["scale"] is None else f"scale needed (x{b['scale']:.3f})")
        for b in p["beds"])
    material = p["material"]
    grams = ", ".join(f"{name} {g:,.0f} g" for name, g in material["grams"].items())
    return [wall, shells, beds, f"material: {material['volume_cm3']:,.1f} cm³ ({grams})"]


def _inspect(args: argparse.Namespace) -> int:
    from gpu_worker.pipeline import inspect

    found, stacks = inspect(args.inputs)
    if args.json:
        out.print_json(json.dumps({
            "files": len(found.sources), "not_dicom": found.not_dicom,
            "not_image": found.not_image, "not_image_reasons": dict(found.reasons),
            "series": [{**s.as_choice(), "usable": s.usable, "problem": s.problem}
                       for s in stacks]}))
        return 0
    table = Table(title=f"{len(found.sources)} files: {len(found.frames)} image frames, "
                        f"{found.not_dicom} not DICOM, {found.not_image} non-image objects")
    table.add_column("series", overflow="fold")  # the whole UID, for --series
    for col in ("modality", "description", "plane", "slices", "size", "spacing mm", "usable"):
        table.add_column(col)
    for s in stacks:
        sx, sy, sz = s.spacing_mm
        table.add_row(s.uid, escape(s.modality), escape(s.description), s.plane,
                      f"{s.positions}" + (f" x {s.time_points} t" if s.time_points > 1 else ""),
                      f"{s.cols}x{s.rows}x{s.positions}", f"{sx:.3g}x{sy:.3g}x{sz:.3g}",
                      "yes" if s.usable else f"no: {escape(s.problem)}")
    out.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemon = args.command in ("up", "serve", "worker", "scheduler")
    logging.basicConfig(level=logging.DEBUG if args.debug else
                        logging.INFO if daemon else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in SERVICE_COMMANDS:
            return run(args)
        return _convert(args) if args.command == "convert" else _inspect(args)
    except (ConversionError, ConfigError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        err.print(f"[bold red]internal error[/] ({type(exc).__name__}): this is a bug in "
                  "dicomstl, not a problem with your data; rerun with --debug for details")
        return 3


if __name__ == "__main__":
    sys.exit(main())
