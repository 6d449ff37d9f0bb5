"""The conversion options a web or API user may set, checked before a job is made.

The same names as ``gpu_worker.pipeline.Options``; the backend is the server's choice.
"""

from __future__ import annotations

import math
from typing import Any

from dicomstl.errors import ConversionError
from gpu_worker.options import Options

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
}


_WORDS = {"string": "text", "number": "a number", "integer": "a whole number"}


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
        if isinstance(value, bool) or not isinstance(value, types):
            raise OptionsError(f"option {name!r} must be {_WORDS[kind]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionsError(f"option {name!r} must be a finite number")
        if isinstance(value, str) and len(value) > 200:
            raise OptionsError(f"option {name!r} is too long")
        if kind == "integer" and abs(value) > 2**31:
            raise OptionsError(f"option {name!r} is out of range")
        options[name] = value
    try:
        to_pipeline(options).validate()
    except ConversionError as exc:
        raise OptionsError(str(exc)) from None
    return options


def to_pipeline(options: dict, backend: str = "auto", gpu_memory_budget: int = 0) -> Options:
    """The pipeline's Options for checked job options, with the server's engine settings."""
    return Options(backend=backend, gpu_memory_budget=gpu_memory_budget, **options)


def form_options(form: dict[str, str]) -> dict:
    """Options from an HTML form's text fields (empty fields mean the default)."""
    raw: dict[str, Any] = {}
    for name, (kind, _types) in OPTION_TYPES.items():
        text = (form.get(name) or "").strip()
        if not text:
            continue
        try:
            raw[name] = int(text) if kind == "integer" else float(text) if kind == "number" \
                else text
        except ValueError:
            raise OptionsError(f"{name.replace('_', ' ')} must be {_WORDS[kind]}") from None
    return parse_options(raw)
