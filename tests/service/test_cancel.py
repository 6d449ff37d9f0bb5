"""Deleting a running job stops its conversion: the worker ends the run before the next stage,
writes nothing, the files go at once, and the worker is free for the next job. In-process on a
real Redis and database, then with real processes (gunicorn, a worker, redis-server) on the
real head CT."""

from __future__ import annotations

import re
import time

import pytest

from dicomstl import jobs
from dicomstl_cli.client import Client
from tests.service.helpers import api_submit, wait_for


def test_a_deleted_or_superseded_run_may_not_start_another_stage(app, settings, api_key,
                                                                 series):
    job_id = api_submit(app.test_client(), api_key, series).json["id"]
    assert jobs.start_run(settings, job_id, 1).state == "running"
    jobs.record_progress(settings, job_id, 1, "read", "start")
    assert jobs.heartbeat(settings, job_id, 1)
    with pytest.raises(jobs.RunCancelled):
        jobs.record_progress(settings, job_id, 2, "decode", "start")  # not this job's run
    jobs.delete_job(settings, job_id, f"key:{api_key.id}")
    assert not (settings.jobs_dir / job_id).exists()  # the files go at once
    with pytest.raises(jobs.RunCancelled):
        jobs.record_progress(settings, job_id, 1, "decode", "start")
    assert not jobs.heartbeat(settings, job_id, 1) and not jobs.is_current(settings, job_id, 1)
    row = jobs.get_job(settings, job_id)
    assert row.state == "deleted" and row.stage == "read"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_deleting_a_running_job_stops_it_at_the_next_stage(shared_dicom, web_url, worker,
                                                           api_key, settings, tmp_path):
    worker()
    client = Client(web_url, api_key.key)
    # smoothing (~4 s here), islands, then a decimation of ~20 s: a run of half a minute
    options = {"smooth_mm": 5, "keep": "largest", "max_triangles": 300000}
    job_id = client.submit([shared_dicom / "ct-phantom-head-1mm"], options)["id"]
    wait_for(lambda: client.job(job_id)["stage"] == "smooth", 120, "the smooth stage")
    deleted_at = time.monotonic()
    gone = client.delete(job_id)
    assert gone["state"] == "deleted" and not (settings.jobs_dir / job_id).exists()
    log = tmp_path / "worker.log"
    line = wait_for(lambda: re.search(
        rf"job {re.escape(job_id[:8])} is no longer wanted .* stopped after stage (\S+)",
        log.read_text()), 60, "the worker to stop")
    stopped_s = time.monotonic() - deleted_at
    assert line.group(1) == "smooth"  # the stage that was running: no later one started
    row = jobs.get_job(settings, job_id)
    assert row.state == "deleted" and row.stage == "smooth" and "decimate" not in row.stages_done
    assert not (settings.jobs_dir / job_id).exists()  # nothing written, not even a folder
    # The worker is free at once: the next job converts.
    quick = client.submit([shared_dicom / "mr-enhanced-sag"], {})["id"]
    assert client.wait(quick, poll_s=0.3, timeout_s=60)["state"] == "done"
    # It stopped within the stage it was in (about 4 s), far from the 20 s still to go.
    assert stopped_s < 15, stopped_s
