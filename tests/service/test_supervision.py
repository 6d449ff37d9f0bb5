"""`dicomstl up` keeps the service alive: a worker or the redis-server killed with SIGKILL is
started again by `up`, the jobs it held end done, and jobs whose queue entries died with
Redis are queued again as the same run (no attempt counted). A process that keeps dying stops
`up` with a clear message. Real processes: up, gunicorn, worker, scheduler, redis-server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dicomstl import apikeys, jobs
from dicomstl.settings import load_settings
from dicomstl_cli.client import Client
from tests.service.helpers import command_line, descendants, wait_for

pytestmark = pytest.mark.slow


def _start_up(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen, Path, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DICOMSTL_DATA_DIR=str(tmp_path / "var"), DICOMSTL_PORT="0",
               DICOMSTL_WEB_METRICS_PORT="0", DICOMSTL_WORKER_METRICS_PORT="0",
               DICOMSTL_SCHEDULER_METRICS_PORT="0", DICOMSTL_HEARTBEAT_S="0.5",
               DICOMSTL_STALL_AFTER_S="3", DICOMSTL_SWEEP_INTERVAL_S="1",
               DICOMSTL_WEB_WORKERS="1", **extra)
    log = tmp_path / "up.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "dicomstl_cli", "up"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    url = wait_for(lambda: re.search(r"running at (http://\S+)/", log.read_text()), 60,
                   "the URL").group(1)
    wait_for(lambda: "worker ready" in log.read_text(), 90, "the worker")
    return proc, log, url


def _child(up: subprocess.Popen, part: str) -> int:
    """The pid of the one live child of `up` whose command line holds ``part``."""
    pids = [p for p in descendants(up.pid) if part in command_line(p)]
    assert pids, f"no {part} process under up"
    return min(pids)  # gunicorn's master before its workers


def _stop(up: subprocess.Popen, log: Path) -> None:
    children = descendants(up.pid)
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0, log.read_text()
    assert "dicomstl stopped" in log.read_text()
    assert not [p for p in children if Path(f"/proc/{p}").exists()]


def test_up_restarts_a_killed_worker_and_redis_and_every_job_ends_done(shared_dicom, tmp_path):
    up, log, url = _start_up(tmp_path)
    try:
        settings = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "var")})
        client = Client(url, apikeys.create_key(settings.database_url, "Clinic").key)
        head = shared_dicom / "ct-phantom-head-1mm"
        slow = {"preset": "bone", "keep": "largest", "max_triangles": 300000}  # ~20 s here

        # 1. The worker dies mid-job: up starts a new one, the scheduler runs the job again.
        first = client.submit([head], slow)["id"]
        wait_for(lambda: client.job(first)["state"] == "running", 120, "running")
        worker = _child(up, "dicomstl_cli worker")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: "restarted the worker process" in log.read_text(), 30, "a restart")
        assert re.search(r"the worker process ended \(killed by SIGKILL\); restarting it in "
                         r"1 s \(restart 1 of at most 5", log.read_text())
        assert client.wait(first, poll_s=0.5, timeout_s=240)["state"] == "done"
        row = jobs.get_job(settings, first)
        assert (row.attempts, row.lost_runs, row.run) == (2, 1, 2)

        # 2. Redis dies while one job runs and two wait: up starts it again; the running job
        # ends done, the waiting ones are queued again as the same run and end done.
        running = client.submit([head], slow)["id"]
        wait_for(lambda: client.job(running)["state"] == "running", 120, "running")
        waiting = [client.submit([shared_dicom / "mr-enhanced-sag"], {})["id"]
                   for _ in range(2)]
        assert {client.job(j)["state"] for j in waiting} == {"queued"}
        os.kill(_child(up, "redis-server"), signal.SIGKILL)
        wait_for(lambda: "restarted the redis-server process" in log.read_text(), 30,
                 "Redis back")
        for job_id in (running, *waiting):
            job = client.wait(job_id, poll_s=0.5, timeout_s=240)
            assert job["state"] == "done", job
        assert [client.job(j)["attempts"] for j in waiting] == [1, 1]
        assert "queue entry is gone; queued again" in log.read_text()
        assert "this is a bug" not in log.read_text()
        # Still one worker, and it still converts.
        assert client.wait(client.submit([shared_dicom / "mr-enhanced-sag"], {})["id"],
                           poll_s=0.5, timeout_s=120)["state"] == "done"
        assert requests.get(url + "/healthz", timeout=5).ok
    finally:
        if up.poll() is None:
            _stop(up, log)


def test_up_stops_when_a_process_keeps_dying(tmp_path):
    up, log, _url = _start_up(tmp_path, DICOMSTL_MAX_RESTARTS="1")
    try:
        os.kill(_child(up, "dicomstl_cli scheduler"), signal.SIGKILL)
        wait_for(lambda: "restarted the scheduler process" in log.read_text(), 30, "a restart")
        wait_for(lambda: any("dicomstl_cli scheduler" in command_line(p)
                             for p in descendants(up.pid)), 30, "the new scheduler")
        os.kill(_child(up, "dicomstl_cli scheduler"), signal.SIGKILL)
        assert up.wait(60) == 1
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert "the scheduler process keeps dying (2 times within 300 s); stopping" in text
    assert "dicomstl stopped" in text
