"""Redis out of reach: uploads are refused with 503 and nothing is kept, callbacks of jobs that
ended meanwhile are delivered once it is back, and re-queued runs are no attempts.

A real redis-server and a real database (SQLite, and PostgreSQL when it answers); "down" is a
socket nobody listens on, or a real Redis that refuses writes (out of memory).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from rq import Queue
from sqlalchemy import func, select

from dicomstl import jobs
from dicomstl.db import Job, session_scope
from dicomstl.queue import connect
from scheduler.recovery import recover
from tests.service.helpers import api_submit, file_parts


@pytest.fixture
def down(settings, tmp_path):
    """The settings with a Redis that is not there."""
    return replace(settings, redis_url=f"unix://{tmp_path / 'no-redis.sock'}")


def _nothing_stored(settings) -> None:
    assert list(settings.incoming_dir.iterdir()) == []
    assert list(settings.jobs_dir.iterdir()) == []
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_uploads_are_refused_with_503_while_redis_is_down(down, settings, api_key, series):
    from web import create_app

    client = create_app(down).test_client()
    r = api_submit(client, api_key, series, {"preset": "bone"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "30"
    assert "queue cannot be reached" in r.json["error"] and "nothing was stored" in r.json["error"]
    page = client.post("/upload", data={"files": file_parts(series)},
                       content_type="multipart/form-data")
    assert page.status_code == 503 and b"nothing was stored" in page.data
    _nothing_stored(settings)
    # Pages that need no queue still answer, and the same upload works once Redis is back.
    assert client.get("/").status_code == 200
    assert api_submit(create_app(settings).test_client(), api_key, series).status_code == 201


def test_a_queue_that_fails_after_the_upload_arrived_keeps_nothing(settings, api_key, series):
    """Redis answers PING but refuses the write (a full Redis): 503, nothing kept, and a retry
    with the same Idempotency-Key once it is writable again makes the job."""
    from web import create_app

    redis = connect(settings.redis_url)
    redis.config_set("maxmemory", "1")
    redis.config_set("maxmemory-policy", "noeviction")
    client = create_app(settings).test_client()
    key = {"Idempotency-Key": "visit-7"}
    try:
        r = api_submit(client, api_key, series, headers=key)
        assert r.status_code == 503 and "nothing was stored" in r.json["error"]
        _nothing_stored(settings)
    finally:
        redis.config_set("maxmemory", "0")
    again = api_submit(client, api_key, series, headers=key)
    assert again.status_code == 201 and again.json["state"] == "queued"


def test_a_callback_of_a_job_ended_while_redis_was_down_is_queued_when_it_is_back(
        down, settings, api_key, series, app):
    job_id = api_submit(app.test_client(), api_key, series,
                        callback_url="https://93.184.215.14/hook").json["id"]
    assert jobs.start_run(down, job_id, 1).attempts == 1
    ended = jobs.finish(down, job_id, 1, message="no DICOM images")  # Redis gone meanwhile
    assert ended.state == "failed" and ended.callback_pending
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.stall_after_s + 1)
    assert recover(down, later)["requeued"] == 0  # still down: waits, no error
    assert recover(settings, later)["requeued"] == 1
    assert Queue("callbacks", connection=connect(settings.redis_url)).job_ids == [
        f"{job_id}_cb"]
    assert recover(settings, later)["requeued"] == 0  # queued once
    jobs.callback_settled(settings, job_id)
    assert not jobs.get_job(settings, job_id).callback_pending


def test_a_job_queued_while_redis_is_down_waits_for_the_scheduler(down, settings, api_key,
                                                                  series, app):
    """A series choice made while Redis is down is kept (the job is stored): the scheduler
    queues it once Redis answers, as the same run."""
    job_id = api_submit(app.test_client(), api_key, series).json["id"]
    jobs.start_run(settings, job_id, 1)
    jobs.finish(settings, job_id, 1, message="pick one",
                choices=[{"uid": "1.2.3", "modality": "CT"}])
    job = jobs.choose_series(down, job_id, f"key:{api_key.id}", "1.2.3")
    assert (job.state, job.run, job.attempts) == ("queued", 2, 1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.stall_after_s + 1)
    assert recover(settings, later)["requeued"] == 1
    # (run 1's entry was never taken: no worker here)
    assert f"{job_id}_r2" in Queue("bulk", connection=connect(settings.redis_url)).job_ids
    assert jobs.get_job(settings, job_id).attempts == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_waits_for_redis_and_then_converts(service_env, settings, api_key, series,
                                                    tmp_path):
    """A worker started while Redis is away (or that loses it) waits and carries on: a lost
    connection is transient, not a bug. Real worker process, real redis-server."""
    from dicomstl.queue import start_embedded_redis
    from tests.service.helpers import spawn, stop, wait_for

    socket_path = tmp_path / "later" / "redis.sock"
    socket_path.parent.mkdir()
    env = {**service_env, "REDIS_URL": f"unix://{socket_path}"}
    log = tmp_path / "worker.log"
    worker = spawn(["worker"], env, log)
    redis = None
    try:
        wait_for(lambda: "Redis is unreachable; the worker connects again" in log.read_text(),
                 60, "the worker to wait")
        assert worker.poll() is None
        redis, url = start_embedded_redis(socket_path.parent, socket_path)
        later = replace(settings, redis_url=url)
        job, _ = jobs.create_job(later, f"key:{api_key.id}", {"level": 0},
                                 [_part(settings, series)], "bulk")
        wait_for(lambda: jobs.get_job(settings, job.id).state == "done", 120, "the job")
        redis.kill()  # and once more, while it waits for work
        redis.wait()
        # idle, RQ's own loop waits for Redis and says so
        wait_for(lambda: "could not connect to Redis" in log.read_text(), 60, "a wait")
        redis, _ = start_embedded_redis(socket_path.parent, socket_path)
        job, _ = jobs.create_job(later, f"key:{api_key.id}", {"level": 0},
                                 [_part(settings, series)], "bulk")
        wait_for(lambda: jobs.get_job(settings, job.id).state == "done", 120, "the job")
        assert worker.poll() is None and "this is a bug" not in log.read_text()
    finally:
        stop(worker)
        if redis is not None and redis.poll() is None:
            redis.terminate()
            redis.wait(10)
    assert worker.returncode == 0  # SIGTERM: a clean stop


def _part(settings, series):
    """The series as one zip in incoming/, as an upload would leave it."""
    import zipfile

    part = settings.incoming_dir / f"part-{len(list(settings.incoming_dir.iterdir()))}"
    with zipfile.ZipFile(part, "w") as archive:
        for n, path in enumerate(series):
            archive.write(path, f"{n:04d}.dcm")
    return part
