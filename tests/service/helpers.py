"""Helpers for the service tests: API auth headers, dicomstl processes, polling."""

from __future__ import annotations

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
        return subprocess.Popen([sys.executable, "-m", "dicomstl", *args],
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
