"""Shared fixtures: the real DICOM data beside the checkout, and external tools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "dicom"

#: Real series and a sensible level for each (from the data's MANIFEST.md).
REAL_SERIES = {
    "ct-phantom-head-1mm": 300.0,
    "ct-phantom-tilt-neg": 300.0,
    "ct-session-mixed": 300.0,
    "mr-epi-axial-4d": None,  # 25% of the 99th percentile: the converter's automatic level
    "mr-enhanced-sag": None,
    "mr-knee-t1-j2k": 90.0,  # JPEG 2000, slices with gaps (spacing 3.8 mm, thickness 3 mm)
    "zip-mr-knee-t1": 90.0,  # the same, zipped in a subfolder
    "ct-enhanced-2frame": 40.0,  # enhanced CT, two frames, row direction flipped
}


@pytest.fixture(scope="session")
def shared_dicom() -> Path:
    """../shared/data/dicom; skipped when absent, except under CI where it must be there."""
    if not SHARED_DICOM.is_dir():
        message = f"real DICOM data not found at {SHARED_DICOM}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the real-data tests)")
        pytest.skip(message)
    return SHARED_DICOM


def require_tool(name: str) -> str:
    """Path of a command-line tool; missing is a failure under CI, a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
