"""The images' lock files still match pyproject.toml (offline): every requirement of the
project, its image's extras and its build system is pinned there, with hashes, at a version
its specifier allows; the worker runs the web's versions; the Dockerfile's Pythons are the
ones the locks were made for. Regenerate with ``.venv/bin/python deploy/lock.py``."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from functools import cache
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.contract import DEPLOY, ROOT, dockerfile_stages

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


def _lock_module():
    spec = importlib.util.spec_from_file_location("deploy_lock", DEPLOY / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()
TARGETS = LOCK.TARGETS


@cache
def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@cache
def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """{canonical name: (version, number of hashes)} of a lock file."""
    found: dict[str, tuple[Version, int]] = {}
    current = None
    for line in (ROOT / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match["name"])
            assert current not in found, f"{lock}: {current} pinned twice"
            found[current] = (Version(match["version"]), 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#") and not line.startswith(" "):
            pytest.fail(f"{lock}: not an exact pin: {line!r}")
    return found


def wanted(lock: str) -> list[Requirement]:
    """What an image must have: the dependencies, its extras and the build requirements,
    whose markers hold for the lock's Python on Linux."""
    extras, python, _platform, _keep_to = TARGETS[lock]
    project = pyproject()["project"]
    texts = [*project["dependencies"], *pyproject()["build-system"]["requires"]]
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    env = {**default_environment(), "python_version": python, "python_full_version":
           f"{python}.0", "sys_platform": "linux", "platform_system": "Linux"}
    return [r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate(env)]


def _extra_requirements(req: Requirement) -> list[Requirement]:
    """What ``req``'s extras add (``psycopg[binary]``: psycopg-binary), from the installed
    distribution's metadata; nothing when it is not installed here."""
    try:
        requires = metadata.requires(req.name) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for text in requires:
        extra_req = Requirement(text)
        if extra_req.marker and any(extra_req.marker.evaluate({"extra": e})
                                    for e in req.extras):
            found.append(extra_req)
    return found


@pytest.mark.parametrize("lock", TARGETS)
def test_every_requirement_is_pinned_at_an_allowed_version(lock):
    locked = pins(lock)
    problems = []
    for req in wanted(lock):
        for needed in [req, *_extra_requirements(req)]:
            name = canonicalize_name(needed.name)
            if name not in locked:
                problems.append(f"{needed} is not in {lock}")
            elif not needed.specifier.contains(locked[name][0], prereleases=True):
                problems.append(f"{lock} pins {name}=={locked[name][0]}, outside {needed}")
    assert not problems, "run .venv/bin/python deploy/lock.py:\n" + "\n".join(problems)


@pytest.mark.parametrize("lock", TARGETS)
def test_every_pin_has_hashes(lock):
    unhashed = [name for name, (_version, hashes) in pins(lock).items() if not hashes]
    assert not unhashed


def test_the_worker_runs_the_versions_the_web_runs():
    web, worker = pins("deploy/requirements.lock"), pins("deploy/requirements-gpu.lock")
    differ = {n: (web[n][0], worker[n][0]) for n in web.keys() & worker.keys()
              if web[n][0] != worker[n][0]}
    assert not differ
    assert {"cupy-cuda13x"} <= worker.keys() - web.keys()


def test_the_locks_are_made_for_the_images_pythons():
    stages = dockerfile_stages()
    python_image = stages["app"].base  # python:3.11.13-slim-bookworm
    assert python_image.startswith("python:" + TARGETS["deploy/requirements.lock"][1] + ".")
    assert "bookworm" in python_image  # glibc 2.36: manylinux_2_36
    assert TARGETS["deploy/requirements.lock"][2].endswith("manylinux_2_36")
    cuda_image = stages["worker"].base  # nvidia/cuda:…-ubuntu24.04: Python 3.12, glibc 2.39
    assert cuda_image.split("@")[0].endswith("-ubuntu24.04")
    assert TARGETS["deploy/requirements-gpu.lock"][1:3] == ("3.12", "x86_64-manylinux_2_39")
    for lock in TARGETS:
        header = (ROOT / lock).read_text().splitlines()[:2]
        assert header[1].strip("# ") == LOCK.COMMAND, f"{lock} was not made by deploy/lock.py"


def test_the_check_finds_a_stale_pin(tmp_path, monkeypatch):
    """The test above fails for a lock that no longer satisfies pyproject.toml."""
    stale = tmp_path / "stale.lock"
    text = (ROOT / "deploy/requirements.lock").read_text()
    stale.write_text(re.sub(r"^rq==\S+", "rq==1.16.2", text, flags=re.MULTILINE))
    monkeypatch.setitem(TARGETS, str(stale), TARGETS["deploy/requirements.lock"])
    pins.cache_clear()
    try:
        with pytest.raises(AssertionError, match=r"pins rq==1\.16\.2, outside rq>=2\.0"):
            test_every_requirement_is_pinned_at_an_allowed_version(str(stale))
    finally:
        pins.cache_clear()
