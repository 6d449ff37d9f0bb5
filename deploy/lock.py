"""Write the images' Python lock files from pyproject.toml (needs ``uv`` and the package index).

    .venv/bin/python deploy/lock.py            # keep the pins that still satisfy pyproject
    .venv/bin/python deploy/lock.py --upgrade  # newest versions pyproject allows

Each lock pins every package an image installs, with its hashes, for that image's Python and
platform (``TARGETS``): the project's dependencies (and extras) and its build requirements
(pyproject's ``[build-system]``: the image builds the project without build isolation, so
nothing unpinned is fetched). The worker's lock is held to the web's versions wherever they
overlap, so every image runs the same numpy, SciPy and Numba. ``tests/deploy/test_lock.py``
checks, offline, that the locks still satisfy pyproject.toml.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python deploy/lock.py"


#: lock file -> (extras, Python version, platform, lock whose versions it keeps to). The
#: versions and platforms are the images' (deploy/Dockerfile): python:3.11 on Debian bookworm
#: (glibc 2.36) and the CUDA runtime's Ubuntu 24.04, whose Python is 3.12 (glibc 2.39).
TARGETS = {
    "deploy/requirements.lock": ((), "3.11", "x86_64-manylinux_2_36", None),
    "deploy/requirements-gpu.lock": (("gpu",), "3.12", "x86_64-manylinux_2_39",
                                     "deploy/requirements.lock"),
}


def build_requirements() -> list[str]:
    """pyproject.toml's ``[build-system] requires``."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["build-system"]["requires"]


def compile_lock(output: str, upgrade: bool = False) -> None:
    """Run ``uv pip compile`` for one target of ``TARGETS``."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    extras, python, platform, keep_to = TARGETS[output]
    command = [uv, "pip", "compile", "pyproject.toml", "-", "--quiet",
               "--python-version", python, "--python-platform", platform,
               "--generate-hashes", "--annotation-style", "line",
               "--custom-compile-command", COMMAND, "--output-file", output]
    for extra in extras:
        command += ["--extra", extra]
    if keep_to:
        command += ["--constraint", keep_to]
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, cwd=ROOT, check=True,
                   input="\n".join(build_requirements()) + "\n", text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true",
                        help="take the newest versions pyproject.toml allows")
    args = parser.parse_args(argv)
    for output in TARGETS:  # in order: the worker's lock keeps to the web's
        compile_lock(output, args.upgrade)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
