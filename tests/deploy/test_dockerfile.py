"""deploy/Dockerfile, checked without a Docker engine: hadolint, one target per process with
its command and health check, pinned bases, the locked install, an unprivileged user and a
read-only root file system, and a build context that holds only the source."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

import pytest

from dicomstl_cli.main import build_parser
from tests.deploy.contract import (
    DEPLOY,
    DOCKERFILE,
    PROCESSES,
    ROOT,
    dockerfile_stages,
    exec_form,
    image_env,
    image_setting,
    tool,
)

STAGES = dockerfile_stages()
#: An exact tag: a full version (major.minor.patch; PostgreSQL's releases are major.minor)
#: somewhere in it, and perhaps a digest.
EXACT_TAG = re.compile(r"^(?:postgres:\d+\.\d+|[\w.\-/]+:[\w.\-]*\d+\.\d+\.\d+)[\w.\-]*"
                       r"(@sha256:[0-9a-f]{64})?$")
APP_USER = "10001:10001"


def _hadolint(path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_hadolint_finds_nothing():
    done = _hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_find_what_it_should(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install flask\n")
    findings = _hadolint(bad).stdout
    assert {"DL3007", "DL3008", "DL3013", "DL3015"} <= set(re.findall(r"DL\d{4}", findings))


def test_every_lint_waiver_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[n - 1].startswith("#") and "hadolint" not in lines[n - 1], (
                f"line {n + 1}: say why above the waiver")


@pytest.mark.parametrize("target", PROCESSES)
def test_each_process_has_its_target_command_and_health_check(target):
    assert exec_form(image_setting(STAGES, target, "ENTRYPOINT")) == ["dicomstl"]
    command = exec_form(image_setting(STAGES, target, "CMD"))
    assert command == [PROCESSES[target]]
    assert build_parser().parse_args(command).command == PROCESSES[target]
    check = image_setting(STAGES, target, "HEALTHCHECK")
    options, _, probe = check.partition(" CMD ")
    assert exec_form(probe) == ["dicomstl", "health", target]
    args = build_parser().parse_args(exec_form(probe)[1:])
    assert (args.command, args.process) == ("health", target)
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, (target, option)
    assert image_setting(STAGES, target, "USER") == APP_USER


def test_the_web_target_is_the_default_one():
    assert list(STAGES)[-1] == "web"


def test_base_images_are_pinned_by_exact_tag():
    for loose in ("python:3.11-slim", "python:3", "redis:latest", "postgres:17"):
        assert not EXACT_TAG.match(loose)
    for stage in STAGES.values():
        if stage.base in STAGES or stage.base == "scratch":
            continue
        assert EXACT_TAG.match(stage.base), f"{stage.name}: {stage.base} is not an exact tag"
        assert ":latest" not in stage.base


def test_the_worker_runs_on_the_cuda_runtime_and_both_engines():
    worker = STAGES["worker"]
    assert worker.base.startswith("nvidia/cuda:13.") and "-runtime-" in worker.base
    assert STAGES["worker-build"].base == worker.base  # the venv's Python is the runtime's
    env = image_env(STAGES, "worker")
    assert env["DICOMSTL_BACKEND"] == "auto"  # the GPU where CuPy finds one, else the CPU
    assert STAGES["app"].base == STAGES["app-build"].base
    assert STAGES["app"].base.startswith("python:3.11.")


def test_the_locks_are_installed_with_their_hashes_and_nothing_else_is_fetched():
    for build, lock in (("app-build", "deploy/requirements.lock"),
                        ("worker-build", "deploy/requirements-gpu.lock")):
        copies = " ".join(STAGES[build].all("COPY"))
        runs = " ".join(STAGES[build].all("RUN"))
        assert lock in copies
        assert "--require-hashes" in runs and "--no-deps" in runs
        # the project itself: without dependencies, built with the locked setuptools
        assert "--no-deps --no-build-isolation /src" in runs


def test_the_final_images_are_copied_from_build_stages():
    for target in ("app", "worker"):
        copies = STAGES[target].all("COPY")
        assert copies and all(c.startswith("--from=") for c in copies), target


def test_a_read_only_root_file_system_needs_only_the_volumes():
    for target in PROCESSES:
        env = image_env(STAGES, target)
        volumes = set()
        for stage_volumes in (exec_form(v) for s in ("app", "worker")
                              for v in STAGES[s].all("VOLUME")):
            volumes.update(stage_volumes)
        assert env["DICOMSTL_DATA_DIR"] in volumes
        assert env["HOME"] == "/tmp"  # the tmpfs
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
        if target == "worker":
            for name in ("NUMBA_CACHE_DIR", "CUPY_CACHE_DIR", "CUDA_CACHE_PATH"):
                assert env[name].startswith("/var/cache/dicomstl/"), name
            assert "/var/cache/dicomstl" in volumes


def test_the_worker_image_compiles_the_cpu_kernels_as_its_user_into_the_cache():
    worker = STAGES["worker"].instructions
    keywords = [kw for kw, _ in worker]
    warm = next(n for n, (kw, args) in enumerate(worker)
                if kw == "RUN" and "CpuEngine().warm_up()" in args)
    assert keywords.index("USER") < warm  # the cache files belong to the worker's user
    env_at = max(n for n, (kw, args) in enumerate(worker[:warm])
                 if kw == "ENV" and "NUMBA_CACHE_DIR=" in args)
    assert env_at < warm


def test_the_build_context_holds_the_source_and_the_locks_only():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "**"  # everything out, then what goes in
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            if not args.startswith("--from="):
                copied.update(p.split("/")[0] if p.split("/")[0] != "deploy" else p
                              for p in args.split()[:-1])
    assert copied <= kept, copied - kept
    assert not {".venv", "var", "tests", ".env", "deploy/.env"} & kept
    assert "web/node_modules" in rules and "**/__pycache__" in rules


def test_every_file_the_packages_read_is_in_the_wheel():
    """Files beside the code (templates, migrations, CUDA sources) are package data, or an
    image installed from the wheel would lack them."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    skip = ("__pycache__", "node_modules")
    missing = []
    for package in ("dicomstl", "dicomstl_cli", "gpu_worker", "scheduler", "web"):
        for path in sorted((ROOT / package).rglob("*")):
            relative = path.relative_to(ROOT / package).as_posix()
            if (path.is_dir() or path.suffix in (".py", ".pyc", ".nbi", ".nbc")
                    or any(part in skip for part in path.parts)):
                continue
            patterns = package_data.get(package, [])
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
                missing.append(f"{package}/{relative}")
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
