"""Helpers for the service tests: API auth headers, dicomstl processes, polling."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dicomstl import apikeys


def auth(key: apikeys.NewKey | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {getattr(key, 'key', key)}"}


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A dicomstl process with this test's environment, its output in ``log``."""
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "dicomstl_cli", *args],
                                env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout_s: float = 120, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def file_parts(paths: list[Path]) -> list[tuple[io.BytesIO, str]]:
    """Files for a Flask test client's multipart form, under the numbered name the form
    sends ("part")."""
    return [(io.BytesIO(p.read_bytes()), "part") for p in paths]


def api_submit(client, key, series: list[Path], options=None, headers=None, **form):
    """``POST /api/v1/jobs`` through a Flask test client; the response."""
    data = {"files": file_parts(series), **form}
    if options is not None:
        data["options"] = options if isinstance(options, str) else json.dumps(options)
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data",
                       headers={**auth(key), **(headers or {})})


def descendants(pid: int) -> list[int]:
    """The pids of a process's children, their children, and so on."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            child = int(stat.parent.name)
            found += [child, *descendants(child)]
    return found


def command_line(pid: int) -> str:
    """A process's command line ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def serve(env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    """The web app under gunicorn (``dicomstl serve``) on ``port``, once it answers
    ``/healthz``; the test fails with its log if it does not start within a minute."""
    import pytest
    import requests

    proc = spawn(["serve"], {**env, "DICOMSTL_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/healthz", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("the web app did not start:\n" + log.read_text())
        time.sleep(0.2)
