"""Hostile input to the series reader and the archive reader ends in a user error, never a crash.

Proves: (a) every regression file in ``corpus/`` (crashers the fuzzers found, crafted claims)
still ends, through the real read path, in a volume or a ``ConversionError`` with a message,
without hanging and without the process growing; (b) a header claiming 65535x65535x10^6
voxels (or 10^9 frames), and a series of small files claiming 3.2 billion voxels together, are
refused with a clear message before anything of that size is allocated or listed; (c) each
atheris fuzzer, seeded from the real files, runs 30 s (``-seed=1``) without a crash, hang or
out-of-memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from dicomstl.errors import NoImagesError, SeriesGeometryError
from dicomstl.options import Options
from gpu_worker import pipeline
from gpu_worker.dicom_headers import MAX_FRAMES, MAX_VOXELS
from tests.robustness.fuzz_targets import COMPANIONS, Workspace, archive_target, series_target

CORPUS = Path(__file__).resolve().parent / "corpus"
FUZZ = Path(__file__).resolve().parent / "fuzz.py"
TARGETS = {"series": series_target, "archive": archive_target}
CASES = [(target, path) for target in TARGETS for path in sorted((CORPUS / target).iterdir())
         if path.is_file() and path.name != "README.md"]
#: A hang guard, not a speed check: every corpus input takes well under a second.
HANG_S = 60
#: Most the Python/numpy heap may peak at for one corpus input, bytes.
HEAP_PEAK = 256 * 1024**2
#: Most the process's peak RSS may grow while replaying one file, bytes.
RSS_GROWTH = 512 * 1024**2
#: Fuzzing time per target in CI, seconds, and the executions that time must give at least.
FUZZ_S = 30
MIN_EXECS = 50


def _max_rss() -> int:
    """The process's peak resident set size so far, bytes (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in the reader eats it."""


@contextlib.contextmanager
def _bounded(what: str) -> Iterator[list[int]]:
    """Fail if the block runs past HANG_S; yields a list that receives the heap's peak."""
    def hang(signum, frame):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_S)
    tracemalloc.start()
    peak: list[int] = []
    try:
        yield peak
    except _Hang:
        pytest.fail(f"{what} hung for over {HANG_S} s")
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def workspaces(shared_dicom: Path) -> Iterator[dict[str, Workspace]]:
    """The fuzzers' workspaces: the series one with the same two real companion slices."""
    spaces = {"series": Workspace([shared_dicom / c for c in COMPANIONS]),
              "archive": Workspace()}
    yield spaces
    for space in spaces.values():
        space.close()


def test_corpus_is_there_and_documented() -> None:
    """Each target has regression files, and each file has its line in the README."""
    readme = (CORPUS / "README.md").read_text()
    assert {target for target, _ in CASES} == set(TARGETS)
    for target, path in CASES:
        assert f"{target}/{path.name}" in readme, f"{target}/{path.name} is not in README.md"


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_replays_to_user_errors_or_volumes(target: str, path: Path,
                                                  workspaces: dict[str, Workspace]) -> None:
    """(a) A corpus file: a volume or a ConversionError, bounded in time and memory."""
    rss_before = _max_rss()
    with _bounded(f"{target}/{path.name}") as peak:
        outcome = TARGETS[target](path.read_bytes(), workspaces[target])
    assert outcome == "ok" or outcome.endswith("Error")
    assert peak[0] < HEAP_PEAK, f"{target}/{path.name} peaked at {peak[0] / 1e6:.0f} MB"
    assert _max_rss() - rss_before < RSS_GROWTH


def _claim(path: Path, rows: int, cols: int, frames: int, z: float = 0.0) -> Path:
    """A ~1 kB JPEG 2000 CT file whose header claims rows x cols x frames voxels (functional
    groups give every frame a plane), with a few bytes of pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = "1.2.3.4.6", "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    position, orientation, measures, group = Dataset(), Dataset(), Dataset(), Dataset()
    position.ImagePositionPatient = [0, 0, z]
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [1, 1]
    group.PlanePositionSequence = Sequence([position])
    group.PlaneOrientationSequence = Sequence([orientation])
    group.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("rows", "cols", "frames", "words"), [
    (65535, 65535, 10**6, "65535x65535x1000000 voxels"),
    (65535, 65535, 2, "65535x65535x2 voxels"),
    (1, 1, 10**9, f"too many frames: 1000000000, over the limit of {MAX_FRAMES}")])
def test_huge_claim_refused_before_allocating(rows: int, cols: int, frames: int, words: str,
                                              tmp_path: Path) -> None:
    """(b) A 1 kB file claiming 65535x65535x10^6 voxels (or 10^9 frames): NoImagesError naming
    the claim, with nothing of that size allocated or listed."""
    path = _claim(tmp_path / "huge.dcm", rows, cols, frames)
    rss_before = _max_rss()
    with _bounded("the huge claim") as peak, pytest.raises(NoImagesError) as caught:
        pipeline.read_series([path], Options(), pipeline._Timer(None))
    assert words in str(caught.value)
    assert "over the limit" in str(caught.value)
    assert peak[0] < 16 * 1024**2
    assert _max_rss() - rss_before < 64 * 1024**2


def test_series_claiming_too_many_voxels_refused(tmp_path: Path) -> None:
    """(b) Three files, each under the limit, stacking to 32768x32768x3 voxels: refused as a
    series, with its size and the limit, before a slice is decoded."""
    for z in range(3):
        _claim(tmp_path / f"{z}.dcm", 32768, 32768, 1, float(z))
    assert 32768**2 <= MAX_VOXELS < 3 * 32768**2
    with _bounded("the large series") as peak, pytest.raises(SeriesGeometryError) as caught:
        pipeline.read_series([tmp_path], Options(), pipeline._Timer(None))
    assert "32768x32768x3 voxels" in str(caught.value)
    assert "over the limit" in str(caught.value)
    assert peak[0] < 16 * 1024**2


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzzer_runs_clean(target: str, shared_dicom: Path, tmp_path: Path) -> None:
    """(c) The atheris fuzzer, seeded, for FUZZ_S seconds: exit 0, no crasher, enough runs."""
    env = {**os.environ, "DICOMSTL_FUZZ_DATA": str(shared_dicom)}
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [sys.executable, str(FUZZ), target, "-seed=1", f"-max_total_time={FUZZ_S}",
         "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", str(tmp_path / "work")],
        env=env, capture_output=True, text=True, timeout=FUZZ_S + 120, check=False)
    tail = done.stderr[-3000:]
    assert done.returncode == 0, tail
    assert not list(artifacts.iterdir()), tail
    execs = re.search(r"stat::number_of_executed_units: (\d+)", done.stderr)
    assert execs and int(execs.group(1)) >= MIN_EXECS, tail
    seeds = re.search(r"fuzz.py: (\d+) seed files", done.stderr)
    assert seeds and int(seeds.group(1)) >= 10, tail
