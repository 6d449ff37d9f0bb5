"""Coverage-guided fuzzing (atheris/libFuzzer) of the series reader and the archive reader.

Proves, for as long as it runs, that every input ends in a volume or in the engine's
user-error family (``dicomstl.errors.ConversionError``): any other exception, a hang past
``-timeout`` seconds or a process over ``-rss_limit_mb`` is a crash, written by libFuzzer as
``crash-*``/``timeout-*``/``oom-*`` under the artifact prefix (default: a temporary folder,
printed at start). Usage, from the repository root::

    .venv/bin/python tests/robustness/fuzz.py series|archive -max_total_time=600 -timeout=10 \
        -rss_limit_mb=2048 [corpus dirs]

The seed corpus is built into a temporary folder from the real files in
``../shared/data/dicom`` (``DICOMSTL_FUZZ_DATA`` overrides), pydicom's bundled test files and
the regression files in ``tests/robustness/corpus/<target>``; files longer than ``-max_len``
(default 128 KiB for series, 256 KiB for archives) are cut there (header plus some pixel data).
New units go to the first corpus folder given, else to a temporary one. The archive target
mutates zip members and re-zips them half the time (``archive_mutator``).
"""

from __future__ import annotations

import atexit
import io
import os
import random
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["gpu_worker", "dicomstl", "pydicom"]):
    import pydicom.data

    from tests.robustness import fuzz_targets

#: The shared real series (read in place, never copied into the repository).
DATA = Path(os.environ.get("DICOMSTL_FUZZ_DATA", ROOT.parent / "shared" / "data" / "dicom"))
CORPUS = Path(__file__).resolve().parent / "corpus"
EPI, COMPANIONS = fuzz_targets.EPI, fuzz_targets.COMPANIONS
DEFAULT_MAX_LEN = {"series": 128 * 1024, "archive": 256 * 1024}


def _pydicom_files() -> list[Path]:
    base = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in base.rglob("*") if p.is_file() and (
        p.suffix == ".dcm" or p.parent.name in ("dicomdirtests", "CT2", "MR2", "77654033")))


def _series_files() -> list[Path]:
    """A few real files of every shared series (first, middle), the broken ones, companions'
    series mates."""
    picked: list[Path] = []
    if DATA.is_dir():
        for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".zip")
            if folder.name == "broken":
                picked.extend(files)
            elif files:
                picked.extend({files[0], files[len(files) // 2]})
        picked.extend(DATA / EPI.format(n) for n in (3, 4, 16))
    return picked + _pydicom_files()


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _archive_seeds() -> dict[str, bytes]:
    """Small zips of real files: a 3-slice series (stored and deflated), in sub-folders,
    enhanced multi-frame, mixed with non-DICOM, and the real small zips."""
    seeds: dict[str, bytes] = {}
    if DATA.is_dir():
        epi = [(f"S1/{n}.dcm", (DATA / EPI.format(n)).read_bytes()) for n in (1, 2, 3)]
        seeds["epi3-deflate.zip"] = _zip(epi)
        seeds["epi3-stored.zip"] = _zip(epi, zipfile.ZIP_STORED)
        rle = DATA / "mr-enhanced-small-rle"
        seeds["enhanced-rle.zip"] = _zip([(p.name, p.read_bytes()) for p in rle.glob("*.dcm")])
        with zipfile.ZipFile(DATA / "zip-mr-knee-t1" / "knee-t1.zip") as knee:
            first = [m for m in knee.infolist() if not m.is_dir()][:2]
            seeds["knee-j2k-2.zip"] = _zip([(m.filename, knee.read(m)) for m in first])
        seeds["epi-and-text.zip"] = _zip(
            [*epi[:2], ("README.txt", b"not dicom\n"), ("DICOMDIR", bytes(200))])
        for path in (DATA / "broken").glob("*.zip"):
            seeds[path.name] = path.read_bytes()
    test_files = Path(pydicom.data.__file__).parent / "test_files"
    small = ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_truncated.dcm"]
    seeds["pydicom-small.zip"] = _zip([(f"a/{n}", (test_files / n).read_bytes())
                                       for n in small if (test_files / n).is_file()])
    return seeds


def archive_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Half the time, mutate one member of a readable zip and write the zip again (CRCs and
    sizes right), so that mutations reach the DICOM reader behind the archive reader; else
    libFuzzer's own byte mutations (which mostly exercise the zip parsing)."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                infos = [m for m in archive.infolist() if m.file_size <= 4 * max_size]
                members = [(m, archive.read(m)) for m in infos]
        except Exception:  # not a readable zip: fall back to byte mutations
            members = []
        if members:
            k = rng.randrange(len(members))
            body = members[k][1]
            members[k] = (members[k][0], atheris.Mutate(body, max(2 * len(body), 1024)))
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as out:
                for info, body in members:
                    out.writestr(info.filename, body, compress_type=info.compress_type
                                 if info.compress_type in (zipfile.ZIP_STORED,
                                                           zipfile.ZIP_DEFLATED)
                                 else zipfile.ZIP_DEFLATED)
            if buffer.tell() <= max_size:
                return buffer.getvalue()
    return atheris.Mutate(data, max_size)


def build_seeds(target: str, out: Path, max_len: int) -> int:
    """Write the seed corpus of ``target`` into ``out``, each file cut to ``max_len`` bytes;
    returns how many files were written."""
    out.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, bytes] = {}
    if target == "series":
        for path in _series_files():
            seeds[f"{path.parent.name}-{path.name}"] = path.read_bytes()[:max_len]
    else:
        seeds.update((name, data) for name, data in _archive_seeds().items()
                     if len(data) <= max_len)
    regression = CORPUS / target
    if regression.is_dir():
        seeds.update((f"regression-{p.name}", p.read_bytes()[:max_len])
                     for p in regression.iterdir() if p.is_file() and p.name != "README.md")
    for name, data in seeds.items():
        (out / name).write_bytes(data)
    return len(seeds)


def main(argv: list[str]) -> None:
    """Parse ``series|archive`` and libFuzzer's flags, build the seeds, run the fuzzer."""
    if len(argv) < 2 or argv[1] not in ("series", "archive"):
        sys.exit("usage: fuzz.py series|archive [libFuzzer flags] [corpus dirs]")
    target = argv[1]
    flags = [a for a in argv[2:] if a.startswith("-")]
    dirs = [a for a in argv[2:] if not a.startswith("-")]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={DEFAULT_MAX_LEN[target]}")
    max_len = int(next(f for f in flags if f.startswith("-max_len=")).split("=", 1)[1])
    tmp = Path(tempfile.mkdtemp(prefix=f"dicomstl-fuzz-{target}-"))
    atexit.register(shutil.rmtree, tmp, True)
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        artifacts = Path(tempfile.gettempdir()) / f"dicomstl-fuzz-artifacts-{target}"
        artifacts.mkdir(exist_ok=True)
        flags.append(f"-artifact_prefix={artifacts}/")
        print(f"fuzz.py: crashers go to {artifacts}/", file=sys.stderr)
    dirs = dirs or [str(tmp / "work")]
    Path(dirs[0]).mkdir(parents=True, exist_ok=True)
    seeds = tmp / "seeds"
    n = build_seeds(target, seeds, max_len)
    print(f"fuzz.py: {n} seed files for {target}", file=sys.stderr)

    companions = [DATA / c for c in COMPANIONS if (DATA / c).is_file()] \
        if target == "series" else []
    workspace = fuzz_targets.Workspace(companions)
    atexit.register(workspace.close)
    run = fuzz_targets.series_target if target == "series" else fuzz_targets.archive_target

    def one_input(data: bytes) -> None:
        run(data, workspace)

    mutator = archive_mutator if target == "archive" else None
    atheris.Setup([argv[0], *flags, *dirs, str(seeds)], one_input, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
