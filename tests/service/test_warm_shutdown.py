"""A worker told to stop (SIGTERM: what Kubernetes sends when it scales a worker pod down or
replaces it) finishes the conversion it is running, takes no new job and exits 0: RQ's warm
shutdown, which deploy/k8s/ relies on (terminationGracePeriodSeconds outlasts the longest job).
A real worker process on a real redis-server, the real head CT."""

from __future__ import annotations

import signal
import time

import pytest
from rq import Queue

from dicomstl import jobs
from dicomstl.queue import connect
from tests.service.helpers import api_submit, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigterm_mid_job_finishes_the_job_takes_no_other_and_exits_0(
        shared_dicom, app, settings, api_key, worker, tmp_path):
    proc = worker()
    log = tmp_path / "worker.log"
    wait_for(lambda: "worker ready" in log.read_text() or proc.poll() is not None, 180,
             "the worker to warm up")
    assert proc.poll() is None, log.read_text()
    client = app.test_client()
    head = sorted((shared_dicom / "ct-phantom-head-1mm").glob("I*"))
    # a bone surface decimated to 300k triangles: tens of seconds on two cores
    slow = {"preset": "bone", "keep": "largest", "max_triangles": 300000}
    response = api_submit(client, api_key, head, slow)
    assert response.status_code == 201, response.json
    running = response.json["id"]
    wait_for(lambda: jobs.get_job(settings, running).stage not in (None, "read"), 180,
             "the job to get past reading")
    small = sorted((shared_dicom / "mr-enhanced-sag").iterdir())
    waiting = api_submit(client, api_key, small, {}).json["id"]
    assert jobs.get_job(settings, waiting).state == "queued"

    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert jobs.get_job(settings, running).state == "running"  # the signal came mid-job
    assert proc.wait(300) == 0, log.read_text()
    stopped_s = time.monotonic() - signalled

    done = jobs.get_job(settings, running)
    assert done.state == "done", (done.state, done.message, log.read_text())
    assert done.attempts == 1 and done.lost_runs == 0
    # The job queued behind it was not taken: still queued, its entry still on its queue.
    left = jobs.get_job(settings, waiting)
    assert (left.state, left.attempts) == ("queued", 0)
    queued = Queue(left.queue, connection=connect(settings.redis_url)).job_ids
    assert any(entry.startswith(waiting) for entry in queued), queued
    assert "cold shut down" not in log.read_text()
    assert stopped_s > 1, "the worker stopped at once instead of finishing its job"
