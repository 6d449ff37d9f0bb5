"""What a user can choose for a conversion, and the stages it goes through.

Kept free of the engine's heavy imports (Numba, SciPy, MeshLab), so the web front end can
check options without loading them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dicomstl.errors import ConversionError
from gpu_worker.presets import PRESETS

FORMATS = ("stl", "stl-ascii", "3mf")

STAGES = ("read", "decode", "volume", "smooth", "islands", "surface", "decimate",
          "mesh-smooth", "check", "write")

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
}
#: The most parts ``keep`` may name.
MAX_KEEP = 10_000


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
        if self.format not in FORMATS:
            raise ConversionError(f"unknown format {self.format!r}; choose one of "
                                  f"{', '.join(FORMATS)}")


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
