"""The bulk API and the pages in-process (Flask's test client) on a real Redis and a real
database (SQLite, and PostgreSQL when it answers): auth, ownership, idempotency, limits."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dicomstl import apikeys, jobs
from dicomstl.db import Job, session_scope
from dicomstl.queue import connect
from scheduler.main import run_pass
from scheduler.recovery import recover
from tests.service.helpers import api_submit as _submit
from tests.service.helpers import auth
from tests.service.helpers import file_parts as _files


def test_submit_queues_a_job_with_its_deadline(app, settings, api_key, series):
    client = app.test_client()
    before = dt.datetime.now(dt.UTC)
    r = _submit(client, api_key, series, {"preset": "bone", "smooth_mm": 0.5})
    assert r.status_code == 201, r.json
    job = r.json
    # queued, not yet started by a worker: no attempt yet
    assert job["state"] == "queued" and job["queue"] == "bulk" and job["attempts"] == 0
    assert job["options"] == {"preset": "bone", "smooth_mm": 0.5}
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert len(job["id"]) >= 32  # 192 random bits
    deadline = dt.datetime.fromisoformat(job["delete_after"])
    assert dt.timedelta(minutes=59) < deadline - before <= dt.timedelta(minutes=61)
    stored = sorted((settings.jobs_dir / job["id"] / "upload").iterdir())
    assert [p.name for p in stored] == [f"{n:06d}.part" for n in range(len(series))]
    assert job["upload"] == {"files": len(series),
                             "bytes": sum(p.stat().st_size for p in series)}
    assert list(settings.incoming_dir.iterdir()) == []
    queued = Queue("bulk", connection=connect(settings.redis_url)).job_ids
    assert queued == [f"{job['id']}_r1"]


def test_api_needs_a_valid_key(app, settings, api_key):
    client = app.test_client()
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers=auth("dsk_nope_nope")).status_code == 401
    assert client.get("/api/v1/jobs", headers=auth(api_key)).status_code == 200
    assert apikeys.revoke_key(settings.database_url, api_key.key.split("_")[1])
    r = client.get("/api/v1/jobs", headers=auth(api_key))
    assert r.status_code == 401 and "API key" in r.json["error"]
    assert client.get("/api/v1/openapi.json").status_code == 200  # public


def test_keys_are_stored_hashed(settings, api_key):
    rows = apikeys.list_keys(settings.database_url)
    assert len(rows) == 1 and api_key.key not in {rows[0].key_hash, rows[0].prefix}
    assert rows[0].last_used_at is None


def test_idempotent_retry_returns_the_same_job(app, settings, api_key, series):
    client = app.test_client()
    first = _submit(client, api_key, series, headers={"Idempotency-Key": "visit-42"})
    again = _submit(client, api_key, series, headers={"Idempotency-Key": "visit-42"})
    other = _submit(client, api_key, series, headers={"Idempotency-Key": "visit-43"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json["id"] == first.json["id"] != other.json["id"]
    assert sorted(p.name for p in settings.jobs_dir.iterdir()) == sorted(
        [first.json["id"], other.json["id"]])
    assert list(settings.incoming_dir.iterdir()) == []  # the repeated upload is discarded
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2
    # The same key from another client is another job.
    second_key = apikeys.create_key(settings.database_url, "Other clinic")
    theirs = _submit(client, second_key, series, headers={"Idempotency-Key": "visit-42"})
    assert theirs.status_code == 201 and theirs.json["id"] != first.json["id"]


def test_other_clients_jobs_are_not_found(app, settings, api_key, series):
    client = app.test_client()
    job_id = _submit(client, api_key, series).json["id"]
    stranger = apikeys.create_key(settings.database_url, "Stranger")
    for method, path in [("GET", f"/api/v1/jobs/{job_id}"),
                         ("GET", f"/api/v1/jobs/{job_id}/result"),
                         ("DELETE", f"/api/v1/jobs/{job_id}")]:
        r = client.open(path, method=method, headers=auth(stranger))
        assert r.status_code == 404, (method, path)
    assert client.get("/api/v1/jobs", headers=auth(stranger)).json["total"] == 0
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(api_key)).json["state"] == "queued"
    # A browser session cannot see an API job either.
    assert client.get(f"/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize(("options", "text"), [
    ({"colour": "red"}, "unknown option 'colour'"),
    ({"level": "high"}, "'level' must be a number"),
    ({"preset": "bone", "level": 300}, "either a preset or a level"),
    ({"decimate": 1.5}, "fraction of triangles"),
    ({"preset": "cartilage"}, "unknown preset"),
    ([1, 2], "JSON object"),
])
def test_bad_options_are_refused_clearly(app, settings, api_key, series, options, text):
    r = _submit(app.test_client(), api_key, series, options)
    assert r.status_code == 400 and text in r.json["error"]
    assert list(settings.jobs_dir.iterdir()) == [] and list(settings.incoming_dir.iterdir()) == []


def test_upload_without_files_and_bad_callback(app, settings, api_key, series):
    from web import create_app

    client = app.test_client()
    r = client.post("/api/v1/jobs", data={"options": "{}"}, headers=auth(api_key),
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "no files" in r.json["error"]
    r = _submit(client, api_key, series, callback_url="file:///etc/passwd")
    assert r.status_code == 400 and "callback_url" in r.json["error"]
    # internal addresses are refused (SSRF): Redis on the host, cloud metadata, localhost
    loopback = ("callback_url must not point to a private or local address: 127.0.0.1 is a "
                "loopback address")
    r = _submit(client, api_key, series, callback_url="http://127.0.0.1:6379/")
    assert r.status_code == 400 and r.json["error"] == ("callback_url must use https: this "
                                                        "service does not send callbacks over "
                                                        "plain http")
    lenient = create_app(replace(settings, callback_allow_http=True)).test_client()
    for url, error in [("http://127.0.0.1:6379/", loopback), ("https://127.0.0.1:6379/", loopback),
                       ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a "
                                                                    "link-local address"),
                       ("http://localhost:8998/hook", "localhost resolves to "),
                       ("https://user:pw@93.184.215.14/", "user name or password")]:
        r = _submit(lenient, api_key, series, callback_url=url)
        assert r.status_code == 400 and error in r.json["error"], (url, r.json)
    assert list(settings.jobs_dir.iterdir()) == [] and list(settings.incoming_dir.iterdir()) == []
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_oversize_upload_is_413_and_leaves_nothing(settings, api_key, series):
    from web import create_app

    small = replace(settings, max_upload_bytes=len(series[0].read_bytes()) * 2)
    client = create_app(small).test_client()
    r = _submit(client, api_key, series)
    assert r.status_code == 413 and "larger than the limit" in r.json["error"]
    page = client.post("/upload", data={"files": _files(series)},
                       content_type="multipart/form-data")
    assert page.status_code == 413 and b"Upload too large" in page.data
    assert list(settings.incoming_dir.iterdir()) == [] and list(settings.jobs_dir.iterdir()) == []


def test_result_delete_and_paging(app, settings, api_key, series):
    client = app.test_client()
    ids = [_submit(client, api_key, series[:3]).json["id"] for _ in range(3)]
    r = client.get(f"/api/v1/jobs/{ids[0]}/result", headers=auth(api_key))
    assert r.status_code == 409 and "queued" in r.json["error"]
    page = client.get("/api/v1/jobs?limit=2", headers=auth(api_key)).json
    assert page["total"] == 3 and len(page["jobs"]) == 2 and page["next_offset"] == 2
    rest = client.get("/api/v1/jobs?limit=2&offset=2", headers=auth(api_key)).json
    assert rest["next_offset"] is None
    assert {j["id"] for j in page["jobs"] + rest["jobs"]} == set(ids)
    assert client.get("/api/v1/jobs?limit=0", headers=auth(api_key)).status_code == 400
    gone = client.delete(f"/api/v1/jobs/{ids[0]}", headers=auth(api_key))
    assert gone.status_code == 200 and gone.json["state"] == "deleted"
    assert not (settings.jobs_dir / ids[0]).exists()
    assert client.get(f"/api/v1/jobs/{ids[0]}/result", headers=auth(api_key)).status_code == 410


def test_sweep_deletes_jobs_past_their_deadline(app, settings, api_key, series):
    client = app.test_client()
    job_id = _submit(client, api_key, series).json["id"]
    assert run_pass(settings)["upload"] == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.upload_ttl_s + 1)
    assert run_pass(settings, later)["upload"] == 1
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(api_key)).json
    assert job["state"] == "deleted" and "deleted unconverted" in job["message"]
    assert not (settings.jobs_dir / job_id).exists()


def test_form_upload_belongs_to_its_browser_session(app, settings, series):
    browser = app.test_client()
    home = browser.get("/")
    token = home.data.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    r = browser.post("/upload", data={"files": _files(series), "csrf_token": token,
                                      "preset": "bone", "keep": "largest"},
                     content_type="multipart/form-data")
    assert r.status_code == 303
    job_url = r.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    assert browser.get(job_url).status_code == 200
    status = browser.get(job_url + "/status").json
    assert status["state"] == "queued" and status["queue"] == "interactive"
    assert status["options"] == {"preset": "bone", "keep": "largest"}
    other = app.test_client()
    assert other.get(job_url).status_code == 404
    assert other.get(job_url + "/download").status_code == 404
    # A form post without the CSRF token is refused.
    assert browser.post(f"/jobs/{job_id}/delete").status_code == 400
    assert browser.post("/upload", data={"files": _files(series[:1])},
                        content_type="multipart/form-data").status_code == 400
    assert list(settings.incoming_dir.iterdir()) == []


def test_a_run_given_up_for_lost_cannot_overwrite_the_next(app, settings, api_key, series):
    """A worker that only looked dead (a long stage without heartbeats) and finishes after
    its job was re-run changes nothing; the new run's outcome stands."""
    job_id = _submit(app.test_client(), api_key, series).json["id"]
    assert jobs.start_run(settings, job_id, 1).state == "running"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.stall_after_s + 1)
    assert recover(settings, later) == {"rerun": 1, "failed": 0, "requeued": 0}
    assert jobs.start_run(settings, job_id, 1) is None  # the old run may not restart
    stale = jobs.finish(settings, job_id, 1, message="late failure of the first run")
    assert stale.state == "queued" and stale.run == 2 and stale.message is None
    assert stale.attempts == 1 and stale.lost_runs == 1  # one run started, and it was lost
    assert (settings.jobs_dir / job_id / "upload").is_dir()
    assert jobs.start_run(settings, job_id, 2).state == "running"
    done = jobs.finish(settings, job_id, 2, report={"mesh": {}}, result_bytes=84)
    assert done.state == "done" and not (settings.jobs_dir / job_id / "upload").exists()


def test_a_queued_job_whose_queue_entry_vanished_is_queued_again(app, settings, api_key,
                                                                 series):
    """A Redis restart loses the queue entry: the scheduler queues the job again as the same
    run. A run that never started is no attempt, so a later lost worker still re-runs it."""
    job_id = _submit(app.test_client(), api_key, series).json["id"]
    connect(settings.redis_url).flushall()  # a Redis restart without persistence
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.stall_after_s + 1)
    assert recover(settings, later)["requeued"] == 1
    queued = Queue("bulk", connection=connect(settings.redis_url)).job_ids
    assert queued == [f"{job_id}_r1"]
    job = jobs.get_job(settings, job_id)
    assert (job.state, job.run, job.attempts) == ("queued", 1, 0)
    assert recover(settings, later)["requeued"] == 0  # queued again: not twice
    assert jobs.start_run(settings, job_id, 1).attempts == 1
    much_later = later + dt.timedelta(seconds=settings.stall_after_s + 1)
    assert recover(settings, much_later) == {"rerun": 1, "failed": 0, "requeued": 0}


def test_series_choice_page(app, settings, series):
    """When the worker finds several series, the job page offers them (no patient data) and
    the choice queues the job again with that series."""
    browser = app.test_client()
    token = browser.get("/").data.split(b'name="csrf_token" value="')[1].split(b'"')[0]
    r = browser.post("/upload", data={"files": _files(series), "csrf_token": token.decode()},
                     content_type="multipart/form-data")
    job_id = r.headers["Location"].rsplit("/", 1)[1]
    choices = [{"uid": "1.2.3", "modality": "CT", "description": "BRAIN 5MM", "slices": 28,
                "time_points": 1, "size": [512, 512, 28], "spacing_mm": [0.45, 0.45, 5.0],
                "plane": "axial"},
               {"uid": "1.2.4", "modality": "MR", "description": "EPI", "slices": 63,
                "time_points": 1, "size": [86, 86, 63], "spacing_mm": [2.2, 2.2, 2.2],
                "plane": "sagittal"}]
    jobs.start_run(settings, job_id, 1)
    jobs.finish(settings, job_id, 1, message="pick one", choices=choices)
    page = browser.get(f"/jobs/{job_id}").data.decode()
    assert 'value="1.2.3"' in page and "BRAIN 5MM" in page and "86 × 86 × 63" in page
    assert "<td>sagittal</td>" in page
    assert (settings.jobs_dir / job_id / "upload").is_dir()  # kept for the choice
    bad = browser.post(f"/jobs/{job_id}/series", data={"series": "9.9", "csrf_token": token})
    assert bad.status_code == 409
    ok = browser.post(f"/jobs/{job_id}/series", data={"series": "1.2.4", "csrf_token": token})
    assert ok.status_code == 303
    job = browser.get(f"/jobs/{job_id}/status").json
    assert job["state"] == "queued" and job["options"]["series"] == "1.2.4"
    assert job["choices"] is None and job["attempts"] == 1  # the run that found the series


def test_transient_errors_are_retried_user_errors_are_not(app, settings, api_key, series,
                                                          tmp_path, monkeypatch):
    """A lost database connection sends the job back to the queue for RQ's retry with
    backoff; a bad upload fails at once with its message and is not retried (a full disk
    too: tests/robustness/test_faults.py)."""
    from rq import SimpleWorker
    from rq.job import Job as RQJob

    from gpu_worker import tasks

    client = app.test_client()
    conn = connect(settings.redis_url)
    job_id = _submit(client, api_key, series).json["id"]

    def connection_lost(*_args, **_kwargs):
        raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(tasks, "convert", connection_lost)  # fault injection
    SimpleWorker([Queue("bulk", connection=conn)], connection=conn).work(burst=True)
    assert jobs.get_job(settings, job_id).state == "queued"
    entry = RQJob.fetch(f"{job_id}_r1", connection=conn)
    assert entry.get_status() == "scheduled" and entry.retries_left == 1
    monkeypatch.undo()

    text = tmp_path / "notes.txt"
    text.write_text("not DICOM\n" * 50)
    bad = client.post("/api/v1/jobs", data={"files": [(text.open("rb"), "part")]},
                      content_type="multipart/form-data", headers=auth(api_key)).json["id"]
    SimpleWorker([Queue("bulk", connection=conn)], connection=conn).work(burst=True)
    failed = jobs.get_job(settings, bad)
    assert failed.state == "failed" and "DICOM" in failed.message
    assert RQJob.fetch(f"{bad}_r1", connection=conn).get_status() == "finished"
    assert not (settings.jobs_dir / bad / "upload").exists()
