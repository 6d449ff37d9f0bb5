"""The two fuzz targets: one DICOM file, and one .zip upload, through the engine's real read path.

Each target writes the input bytes to a file and runs what a conversion runs before meshing:
``collect_sources`` (folders, files, archives), the header scan (fast reader and pydicom),
series grouping and choice, pixel decoding and the volume stage (``pipeline.read_series`` and
``volume.to_volume``). An input may end in a result or in the ``dicomstl.errors``
``ConversionError`` family (a message for the user); any other exception is a bug and
propagates, which is what the fuzzer (``fuzz.py``) and the replay test (``test_fuzz.py``) catch.
No atheris is needed to import this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicomstl.errors import ConversionError
from dicomstl.options import Options
from gpu_worker import pipeline
from gpu_worker import volume as vol

#: What the targets return: "ok" (a volume was made) or the user error's class name.
Outcome = str

#: Two slices of a real series (paths under ../shared/data/dicom) placed beside the fuzzed file
#: by the series target: a mutated third slice of that series is stacked with them.
EPI = "mr-epi-axial-4d/axial_epi_fmri_interleaved_i_to_s-{:05d}.dcm"
COMPANIONS = [EPI.format(1), EPI.format(2)]

#: "largest": with companion slices the fuzzed file may form its own series; never ask to pick.
_OPTIONS = Options(series="largest")


class Workspace:
    """A private temporary folder holding the fuzzed file (and fixed companion slices).

    ``companions``: real DICOM files copied next to the fuzzed file (series target), so that a
    mutated slice of their series takes part in volume assembly with them.
    """

    def __init__(self, companions: Sequence[str | os.PathLike] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dicomstl-fuzz-"))
        self.series_dir = self.root / "series"
        self.series_dir.mkdir()
        for n, path in enumerate(companions):
            shutil.copyfile(path, self.series_dir / f"companion-{n}.dcm")
        self.archive = self.root / "upload.zip"

    def close(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def _read(inputs: list[Path]) -> Outcome:
    """Run the read path; check the volume it makes is consistent with the stack."""
    try:
        stack, decoded = pipeline.read_series(inputs, _OPTIONS, pipeline._Timer(None))
        volume = vol.to_volume(decoded, np)
    except ConversionError as exc:
        if not str(exc).strip():
            raise AssertionError(f"{type(exc).__name__} without a message") from exc
        return type(exc).__name__
    shape = volume.data.shape
    if shape != (stack.positions, stack.rows, stack.cols) or min(shape) < 1:
        raise AssertionError(f"volume {shape} does not match its stack "
                             f"{stack.positions}x{stack.rows}x{stack.cols}")
    if volume.data.dtype not in (np.int16, np.float32):
        raise AssertionError(f"volume dtype {volume.data.dtype}")
    return "ok"


def series_target(data: bytes, workspace: Workspace) -> Outcome:
    """``data`` as one DICOM file (beside the workspace's companion slices) through the read
    path; returns "ok" or the user error's class name, raises on anything else."""
    (workspace.series_dir / "fuzzed.dcm").write_bytes(data)
    return _read([workspace.series_dir])


def archive_target(data: bytes, workspace: Workspace) -> Outcome:
    """``data`` as an uploaded ``.zip`` through ``collect_sources`` and the read path;
    returns "ok" or the user error's class name, raises on anything else."""
    workspace.archive.write_bytes(data)
    return _read([workspace.archive])
