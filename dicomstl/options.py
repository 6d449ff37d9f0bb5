"""The conversion options contract: what a user can choose, in what range, and the stages a
conversion goes through; shared by the command line, the form, the API and the engine.

Presets are CT thresholds in Hounsfield units. Values follow common practice in medical 3D
printing and the tissue ranges of the Hounsfield scale (air -1000, fat about -100, water 0,
soft tissue +20 to +80, cancellous bone from about +300, cortical bone +1000 and more, tooth
enamel above +2000): Mimics' "Bone (CT)" preset starts at 226 HU and most printing guides use
200-400 HU for bone; skin is the air/tissue boundary, taken half-way between fat and air;
"teeth" sits above bone marrow and most cortex; lung and airway keep the air below -400 HU
that lies inside the body (see ``Preset.invert``).

Kept free of the engine's heavy imports (Numba, SciPy, MeshLab), so the web front end can
check options without loading them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomstl.errors import ConversionError


@dataclass(frozen=True)
class Preset:
    """A threshold: voxels with HU >= level are inside (or HU < level when ``invert``)."""

    name: str
    level: float
    description: str
    invert: bool = False


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("bone", 300.0, "bone (cancellous and cortical), HU >= 300"),
    Preset("skin", -300.0, "skin surface, the air/tissue boundary, HU >= -300"),
    Preset("soft-tissue", 20.0, "muscle and organs without fat, HU >= 20"),
    Preset("teeth", 1200.0, "teeth (enamel and dentine) and dense cortical bone, HU >= 1200"),
    Preset("lung", -400.0, "lung and airway: air inside the body, HU < -400", invert=True),
)}

FORMATS = ("stl", "stl-ascii", "3mf")
#: The engines: ``auto`` is the GPU when one can be used, else the CPU.
BACKENDS = ("auto", "cpu", "gpu")

STAGES = ("read", "decode", "volume", "smooth", "islands", "cavities", "surface", "decimate",
          "mesh-smooth", "check", "printability", "write")

#: The range of each number a user can set, (lowest, highest) with both ends allowed, and
#: its unit. The ends keep a conversion within minutes on any real series: a 5 mm Gaussian
#: on a 512×512×140 CT takes about 4 s on two cores, while 2000 mm took minutes. The
#: fraction ``decimate`` must stay below its highest value.
LIMITS: dict[str, tuple[float, float, str]] = {
    "level": (-1e9, 1e9, "HU for CT, stored units for MR"),
    "time_point": (0, 10_000, ""),
    "downsample": (1, 16, "voxels per block edge"),
    "smooth_mm": (0, 5, "mm"),
    "min_part_mm3": (0, 1e9, "mm³"),
    "decimate": (0, 1, "fraction of triangles removed, below 1"),
    "max_triangles": (100, 50_000_000, "triangles"),
    "mesh_smooth": (0, 100, "iterations"),
    "gpu_memory_budget": (0, 2**50, "bytes"),
    "min_wall_mm": (0.05, 20, "mm"),
    "hollow_mm": (0, 50, "mm, 0: solid"),
    "drain_holes": (0, 16, "holes"),
    "drain_hole_mm": (0.5, 20, "mm"),
}
#: The most parts ``keep`` may name.
MAX_KEEP = 10_000
#: The most segments one job may have (each is a mesh of its own: a stage loop each).
MAX_SEGMENTS = 16
#: A segment's name: it names the 3MF object and the STL in the zip, so it is kept to
#: characters that are safe in a file name.
SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
#: The colours of segments that name none, in turn.
SEGMENT_COLORS = ("#e8dcc0", "#d99c7a", "#c0504d", "#4f81bd", "#9bbb59", "#8064a2",
                  "#f79646", "#4bacc6")


@dataclass(frozen=True)
class Segment:
    """One mesh of a multi-segment job: a preset, a level (inside: value >= level) or a band
    (``level <= value < level2``), in the volume's units (HU for CT); ``color`` "#rrggbb"."""

    name: str
    preset: str | None = None
    level: float | None = None
    level2: float | None = None
    color: str | None = None

    def validate(self) -> None:
        """Raise ConversionError for a name, threshold or colour that cannot work."""
        where = f"segment {self.name!r}"
        if not isinstance(self.name, str) or not SEGMENT_NAME.fullmatch(self.name):
            raise ConversionError(f"a segment name is 1 to 40 letters, digits, '_', '-' or "
                                  f"'.', starting with a letter or digit, not {self.name!r}")
        if (self.preset is None) == (self.level is None):
            raise ConversionError(f"{where}: give either a preset or a level")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConversionError(f"{where}: unknown preset {self.preset!r}; choose one of "
                                  f"{', '.join(PRESETS)}")
        if self.level2 is not None and self.level is None:
            raise ConversionError(f"{where}: a band needs two levels, LEVEL:LEVEL2")
        low, high, unit = LIMITS["level"]
        for value in (self.level, self.level2):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not low <= value <= high:
                raise ConversionError(f"{where}: a level must be a finite number from "
                                      f"{low:,.12g} to {high:,.12g} ({unit})")
        if self.level2 is not None and not self.level2 > self.level:
            raise ConversionError(f"{where}: the band LEVEL:LEVEL2 needs LEVEL2 above LEVEL")
        if self.color is not None and (not isinstance(self.color, str)
                                       or not _COLOR.fullmatch(self.color)):
            raise ConversionError(f"{where}: a colour is #rrggbb, not {self.color!r}")

    def color_or_default(self, index: int) -> str:
        """The segment's colour, or the palette's ``index``-th."""
        return (self.color or SEGMENT_COLORS[index % len(SEGMENT_COLORS)]).lower()

    def as_dict(self) -> dict:
        """The JSON object the API takes (defaults left out)."""
        return {k: v for k, v in (("name", self.name), ("preset", self.preset),
                                  ("level", self.level), ("level2", self.level2),
                                  ("color", self.color)) if v is not None}


def parse_segment(text: str) -> Segment:
    """A segment from ``NAME=PRESET|LEVEL[:LEVEL2][,color=#rrggbb]`` (the command line's
    ``--segment``); raises ConversionError."""
    name, eq, rest = text.partition("=")
    spec, _comma, extra = rest.partition(",")
    name, spec = name.strip(), spec.strip()
    if not eq or not spec:
        raise ConversionError(f"--segment takes NAME=PRESET|LEVEL[:LEVEL2][,color=#rrggbb], "
                              f"not {text!r}")
    color = None
    if extra:
        key, _eq, value = extra.partition("=")
        if key.strip() != "color":
            raise ConversionError(f"segment {name!r}: unknown setting {key.strip()!r} "
                                  f"(only color=#rrggbb)")
        color = value.strip()
    if spec in PRESETS:
        segment = Segment(name, preset=spec, color=color)
    else:
        first, colon, second = spec.partition(":")
        try:
            level = float(first)
            level2 = float(second) if colon else None
        except ValueError:
            raise ConversionError(f"segment {name!r}: {spec!r} is neither a preset ("
                                  f"{', '.join(PRESETS)}) nor LEVEL[:LEVEL2]") from None
        segment = Segment(name, level=level, level2=level2, color=color)
    segment.validate()
    return segment


def check_segments(segments) -> None:
    """Raise ConversionError unless ``segments`` are at most MAX_SEGMENTS valid segments with
    different names."""
    if len(segments) > MAX_SEGMENTS:
        raise ConversionError(f"at most {MAX_SEGMENTS} segments, not {len(segments)}")
    names = set()
    for segment in segments:
        segment.validate()
        if segment.name.lower() in names:
            raise ConversionError(f"two segments are named {segment.name!r}: each needs a "
                                  "name of its own")
        names.add(segment.name.lower())


@dataclass
class Options:
    """What a user can choose; thresholds are in the volume's units (HU for CT)."""

    preset: str | None = None
    level: float | None = None
    series: str | None = None  # None, "largest" or a SeriesInstanceUID
    time_point: int = 0
    crop: str | None = None  # "i0:i1,j0:j1,k0:k1" voxel index ranges
    downsample: int = 1
    smooth_mm: float = 0.0
    keep: str = "all"  # "all", "largest" or N
    min_part_mm3: float = 0.0
    decimate: float | None = None  # fraction of triangles to remove
    max_triangles: int | None = None
    mesh_smooth: int = 0  # Taubin iterations
    format: str = "stl"
    backend: str = "auto"
    gpu_memory_budget: int = 0  # bytes on the GPU for one conversion; 0: 80% of what is free
    min_wall_mm: float = 0.8  # the printability report's thin-wall threshold
    fill_cavities: bool = False  # close internal voids before meshing
    hollow_mm: float = 0.0  # wall thickness of a hollowed model; 0: solid
    drain_holes: int = 0  # holes from the hollow's lowest points (-S) through its wall
    drain_hole_mm: float = 3.0  # their diameter
    printability: bool = True  # the printability report (the CLI's --no-printability)
    segments: tuple[Segment, ...] = ()  # several meshes, each its own threshold


    def validate(self) -> None:
        """Raise ConversionError for options that cannot work together or are out of range
        (``LIMITS``; infinities and NaN are never numbers a user meant)."""
        for name, (low, high, unit) in LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConversionError(f"{_named(name)} must be a finite number, not {value}")
            if not low <= value <= high or (name == "decimate" and value == high):
                raise ConversionError(_out_of_range(name, value, low, high, unit))
        if self.preset is not None and self.preset not in PRESETS:
            raise ConversionError(f"unknown preset {self.preset!r}; choose one of "
                                  f"{', '.join(PRESETS)}")
        if self.preset is not None and self.level is not None:
            raise ConversionError("give either a preset or a level, not both")
        if self.keep not in ("all", "largest") and not (
                self.keep.isdigit() and 1 <= int(self.keep) <= MAX_KEEP):
            raise ConversionError(f"--keep takes 'all', 'largest' or a number of parts from 1 "
                                  f"to {MAX_KEEP:,}, not {self.keep!r}")
        if self.decimate is not None and self.max_triangles is not None:
            raise ConversionError("give either --decimate or --max-triangles, not both")
        if self.drain_holes and not self.hollow_mm:
            raise ConversionError("--drain-holes drains a hollowed model: give --hollow-mm "
                                  "too (the wall thickness in mm)")
        if self.format not in FORMATS:
            raise ConversionError(f"unknown format {self.format!r}; choose one of "
                                  f"{', '.join(FORMATS)}")
        if self.segments:
            if self.preset is not None or self.level is not None:
                raise ConversionError("give either segments (--segment) or a preset or level "
                                      "(each segment has its own), not both")
            check_segments(self.segments)


def _named(name: str) -> str:
    """An option as the API and the form name it, and as the command line does."""
    if name == "gpu_memory_budget":  # the server's setting or the command line's, not the API's
        return "the GPU memory budget"
    return f"{name} (--{name.replace('_', '-')})"


def _out_of_range(name: str, value: float, low: float, high: float, unit: str) -> str:
    if name == "decimate":
        return ("--decimate takes the fraction of triangles to remove, from 0 up to (not "
                "including) 1")
    if name == "max_triangles" and value < low:
        return f"--max-triangles must be at least {low:,.0f}"
    if low == 0 and value < 0:
        return f"{_named(name)} cannot be negative"
    shown = f"{value:,.12g}" if abs(value) < 1e300 else "a number that large"
    return (f"{_named(name)} must be from {low:,.12g} to {high:,.12g}"
            f"{f' ({unit})' if unit else ''}, not {shown}")


# Options as a job carries them (JSON), checked before a job is made ----------------------

#: option -> (JSON type name, Python types accepted)
OPTION_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "preset": ("string", (str,)),
    "level": ("number", (int, float)),
    "series": ("string", (str,)),
    "time_point": ("integer", (int,)),
    "crop": ("string", (str,)),
    "downsample": ("integer", (int,)),
    "smooth_mm": ("number", (int, float)),
    "keep": ("string", (str,)),
    "min_part_mm3": ("number", (int, float)),
    "decimate": ("number", (int, float)),
    "max_triangles": ("integer", (int,)),
    "mesh_smooth": ("integer", (int,)),
    "format": ("string", (str,)),
    "min_wall_mm": ("number", (int, float)),
    "fill_cavities": ("boolean", (bool,)),
    "hollow_mm": ("number", (int, float)),
    "drain_holes": ("integer", (int,)),
    "drain_hole_mm": ("number", (int, float)),
    "segments": ("array", (list,)),
    "preview": ("boolean", (bool,)),
}
#: Options of the job, not of the engine: ``preview`` stops the job after the threshold
#: preview, until its owner picks a level (``dicomstl.jobs.choose_level``).
JOB_OPTIONS = ("preview",)


_WORDS = {"string": "text", "number": "a number", "integer": "a whole number",
          "boolean": "true or false",
          "array": "a list of segments, each an object with a name and a preset or level"}
#: The fields of a segment in the API's JSON.
SEGMENT_FIELDS = ("name", "preset", "level", "level2", "color")


class OptionsError(ConversionError):
    """An option is unknown, of the wrong type or out of range."""


def parse_options(raw: Any) -> dict:
    """Checked options (JSON-like values) with defaults left out; raises OptionsError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionsError("options must be a JSON object")
    unknown = sorted(set(raw) - set(OPTION_TYPES))
    if unknown:
        raise OptionsError(f"unknown option {unknown[0]!r}; known: {', '.join(OPTION_TYPES)}")
    options = {}
    for name, value in raw.items():
        if value is None or value == "":
            continue
        kind, types = OPTION_TYPES[name]
        if (kind != "boolean" and isinstance(value, bool)) or not isinstance(value, types):
            raise OptionsError(f"option {name!r} must be {_WORDS[kind]}")
        if kind == "boolean" and not value:
            continue  # false is the default
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionsError(f"option {name!r} must be a finite number")
        if isinstance(value, str) and len(value) > 200:
            raise OptionsError(f"option {name!r} is too long")
        if kind == "integer" and abs(value) > 2**31:
            raise OptionsError(f"option {name!r} is out of range")
        if kind == "array":
            value = [_json_segment(item) for item in value[:MAX_SEGMENTS + 1]]
            if not value:
                continue
        options[name] = value
    try:
        to_pipeline(options).validate()
    except ConversionError as exc:
        raise OptionsError(str(exc)) from None
    return options


def _json_segment(item: Any) -> dict:
    """A segment of the API's JSON, its fields' types checked (their values: by Options)."""
    if not isinstance(item, dict):
        raise OptionsError(f"option 'segments' must be {_WORDS['array']}")
    unknown = sorted(set(item) - set(SEGMENT_FIELDS))
    if unknown:
        raise OptionsError(f"unknown segment field {unknown[0]!r}; known: "
                           f"{', '.join(SEGMENT_FIELDS)}")
    for key, value in item.items():
        number = key in ("level", "level2")
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, float) if number else str)):
            raise OptionsError(f"segment field {key!r} must be "
                               f"{'a number' if number else 'text'}")
        if isinstance(value, str) and len(value) > 200:
            raise OptionsError(f"segment field {key!r} is too long")
    if not isinstance(item.get("name"), str):
        raise OptionsError("each segment needs a name")
    return {k: v for k, v in item.items() if v is not None and v != ""}


def result_format(options: dict) -> str:
    """The result file's format for a job's options: ``zip`` (one STL per segment) for
    segments written as STL, else the format."""
    fmt = options.get("format", "stl")
    return "zip" if options.get("segments") and fmt != "3mf" else fmt


def to_pipeline(options: dict, backend: str = "auto", gpu_memory_budget: int = 0) -> Options:
    """The engine's Options for checked job options, with the server's engine settings."""
    values = {k: v for k, v in options.items() if k not in JOB_OPTIONS}
    if "segments" in values:
        values["segments"] = tuple(Segment(**item) for item in values["segments"])
    return Options(backend=backend, gpu_memory_budget=gpu_memory_budget, **values)


def form_options(form: dict[str, str],
                 segments: Sequence[tuple[str, str, str]] = ()) -> dict:
    """Options from an HTML form's text fields (empty fields mean the default) and its
    segment rows (name, ``PRESET|LEVEL[:LEVEL2]``, colour; rows without a name and a
    threshold are skipped: a colour picker always sends a colour)."""
    segments = [row for row in segments if row[0].strip() or row[1].strip()]
    raw: dict[str, Any] = {}
    for name, (kind, _types) in OPTION_TYPES.items():
        if kind == "array":
            continue
        text = (form.get(name) or "").strip()
        if not text:
            continue
        if kind == "boolean":  # a checkbox: sent when ticked
            raw[name] = text.lower() in ("1", "on", "true", "yes")
            continue
        try:
            raw[name] = int(text) if kind == "integer" else float(text) if kind == "number" \
                else text
        except ValueError:
            raise OptionsError(f"{name.replace('_', ' ')} must be {_WORDS[kind]}") from None
    if segments:
        raw["segments"] = [_form_segment(*row) for row in segments]
    return parse_options(raw)


def _form_segment(name: str, spec: str, color: str) -> dict:
    """A segment of the form's row (name, "PRESET|LEVEL[:LEVEL2]", colour)."""
    text = f"{name.strip()}={spec.strip()}" + (f",color={color.strip()}" if color.strip()
                                                  else "")
    try:
        return parse_segment(text).as_dict()
    except ConversionError as exc:
        raise OptionsError(str(exc)) from None
