"""Retention with an injected clock, on a real redis-server and a real database (SQLite, and
PostgreSQL when it answers): what is due goes in one sweep, what is not stays; a sweep killed
half-way is finished by the next; orphans are found; two schedulers delete each item once."""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY
from rq.job import Job as RQJob
from sqlalchemy import func, select

from dicomstl import iplog, jobs, storage
from dicomstl.db import (
    CreditEntry,
    Inquiry,
    IpLogEntry,
    Job,
    StripeEvent,
    session_scope,
    utcnow,
)
from dicomstl.queue import connect
from dicomstl.retention_policy import INVOICE_KEEP
from scheduler import retention
from scheduler.lease import LEASE_KEY, Lease
from scheduler.main import Scheduler
from tests.service.helpers import auth

HOUR = dt.timedelta(hours=1)


def _new_job(settings, **fields) -> str:
    """A job stored and queued as the web does it (upload files, RQ entry ``<id>_r1``), then
    given ``fields``; an ended state drops the upload, and ``done`` writes a result."""
    part = settings.incoming_dir / f"part-{secrets.token_hex(4)}"
    part.write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 1000)
    job, _ = jobs.create_job(settings, "key:1", {"preset": "bone", "series": "1.2.840.99"},
                             [part], "bulk")
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job.id)
        for name, value in fields.items():
            setattr(row, name, value)
        if row.state == "done":
            row.report = {"mesh": {"triangles": 12}, "series": "1.2.840.99: CT 'HEAD'",
                          "warnings": []}
    if fields.get("state") in ("done", "failed"):
        storage.delete_upload(settings, job.id)
    if fields.get("state") == "done":
        path = storage.result_path(settings, job.id, "stl")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\0" * 84)
    return job.id


def _state(settings, job_id) -> str | None:
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job_id)
        return row.state if row else None


def _rq_entries(settings, job_id) -> list[str]:
    """Every Redis key that names the job."""
    return [k.decode() for k in connect(settings.redis_url).scan_iter(match=f"*{job_id}*")]


def _has_files(settings, job_id) -> bool:
    return (settings.jobs_dir / job_id).exists()


def _gauge(name, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_one_sweep_deletes_what_is_due_and_nothing_else(settings):
    now = utcnow()
    t = now + HOUR + dt.timedelta(seconds=5)  # the injected clock
    due_upload = _new_job(settings)  # arrived at ``now``, never converted: due at now + 1 h
    due_result = _new_job(settings, state="done", finished_at=t - HOUR - dt.timedelta(
        seconds=1), delete_after=t - dt.timedelta(seconds=1))
    on_the_dot = _new_job(settings, state="failed", finished_at=t - HOUR, delete_after=t)
    young_result = _new_job(settings, state="done", finished_at=t - HOUR + dt.timedelta(
        seconds=1), delete_after=t + dt.timedelta(seconds=1))
    young_upload = _new_job(settings, delete_after=t + dt.timedelta(seconds=60))
    running = _new_job(settings, state="running", delete_after=t + dt.timedelta(minutes=20))
    overrun = _new_job(settings, state="running", delete_after=t - dt.timedelta(seconds=1))
    due = {due_upload, due_result, on_the_dot, overrun}
    kept = {young_result, young_upload, running}
    assert all(_rq_entries(settings, j) for j in due | kept)

    scheduler = Scheduler(settings, clock=lambda: t)
    counts = scheduler.run_pass()
    assert counts["upload"] == 2 and counts["result"] == 2 and counts["redis_job"] == 4
    for job_id in due:
        assert _state(settings, job_id) == "deleted"
        assert not _has_files(settings, job_id)
        assert _rq_entries(settings, job_id) == []
    for job_id in kept:
        assert _state(settings, job_id) != "deleted"
        assert _has_files(settings, job_id)
        assert _rq_entries(settings, job_id)
    view = jobs.get_job(settings, due_upload)
    assert "deleted unconverted" in view.message
    assert "ran past the longest" in jobs.get_job(settings, overrun).message
    # the row that stays says what was made, not from which series
    gone = jobs.get_job(settings, due_result)
    assert gone.report == {"mesh": {"triangles": 12}} and "series" not in gone.options
    assert jobs.get_job(settings, young_result).report["series"].startswith("1.2.840.99")
    assert _gauge("dicomstl_retention_overdue_items", kind="result") == 0
    assert _gauge("dicomstl_retention_oldest_result_age_seconds") == pytest.approx(
        (t - jobs.get_job(settings, young_result).finished_at).total_seconds())
    # a second pass finds nothing more: deletion is idempotent
    assert scheduler.run_pass() == Counter()
    scheduler.lease.release()


def test_queue_entries_outlive_the_job_deadline_so_the_scheduler_deletes_them(settings):
    """Were RQ's expiry first, the entry would vanish and leave its id in RQ's registries."""
    job_id = _new_job(settings)
    left_s = (jobs.get_job(settings, job_id).delete_after - utcnow()).total_seconds()
    assert connect(settings.redis_url).ttl(f"rq:job:{job_id}_r1") > left_s + 60


def test_a_run_moves_the_deadline_to_the_latest_it_can_end(settings):
    """An upload converted a moment before its hour is up is not deleted under the worker."""
    job_id = _new_job(settings, delete_after=utcnow() + dt.timedelta(seconds=5))
    started = jobs.start_run(settings, job_id, 1)
    expected = started.started_at + dt.timedelta(
        seconds=settings.job_timeout_s + settings.stall_after_s)
    assert started.delete_after == expected
    assert retention.next_deadline(settings) == expected


def test_row_rules_ip_log_deleted_jobs_inquiries_payments_events(settings):
    t = utcnow()
    url = settings.database_url
    iplog.record(url, "203.0.113.7", "api", "/api/v1/jobs", now=t - dt.timedelta(days=31))
    iplog.record(url, "203.0.113.8", "login", "/login", now=t - dt.timedelta(days=29))
    old = _new_job(settings, state="deleted", deleted_at=t - dt.timedelta(days=31))
    recent = _new_job(settings, state="deleted", deleted_at=t - dt.timedelta(days=29))
    live = _new_job(settings, state="done", finished_at=t, delete_after=t + HOUR)
    counts = retention.sweep(settings, t)
    assert counts["ip_log"] == 1 and counts["job_record"] == 1
    with session_scope(url) as session:
        assert session.scalars(select(IpLogEntry.ip)).all() == ["203.0.113.8"]
    assert _state(settings, old) is None
    assert _state(settings, recent) == "deleted" and _state(settings, live) == "done"
    assert not _has_files(settings, old) and not _has_files(settings, recent)

    # The contact form's inquiries: 12 months; erased accounts' payment references: the
    # legal window; expired invitations; Stripe event ids: 30 days. Rows without a time stay.
    with session_scope(url) as session:
        session.add_all([
            Inquiry(email="old@example.com", message="old", created_at=t - dt.timedelta(days=366)),
            Inquiry(email="new@example.com", message="new", created_at=t - dt.timedelta(days=364)),
            CreditEntry(delta=10, reason="purchase", stripe_ref="cs_old", created_at=t,
                        erased_at=t - INVOICE_KEEP - dt.timedelta(days=1)),
            CreditEntry(delta=10, reason="purchase", stripe_ref="cs_kept", created_at=t,
                        erased_at=t - INVOICE_KEEP + dt.timedelta(days=1)),
            CreditEntry(delta=10, reason="purchase", stripe_ref="cs_live", created_at=t),
            StripeEvent(id="evt_old", type="invoice.paid", created=0,
                        received_at=t - dt.timedelta(days=31)),
            StripeEvent(id="evt_new", type="invoice.paid", created=0, received_at=t)])
    counts = retention.sweep(settings, t)
    assert (counts["inquiry"], counts["payment_record"], counts["stripe_event"]) == (1, 1, 1)
    with session_scope(url) as session:
        assert session.scalars(select(Inquiry.message)).all() == ["new"]
        assert sorted(session.scalars(select(CreditEntry.stripe_ref))) == ["cs_kept", "cs_live"]
        assert session.scalars(select(StripeEvent.id)).all() == ["evt_new"]


def test_web_writes_one_ip_log_row_per_upload_and_api_call(app, settings, api_key):
    client = app.test_client()
    client.get("/")
    client.get("/api/v1/openapi.json")  # public documentation: not logged
    assert client.get("/api/v1/jobs", headers=auth(api_key)).status_code == 200
    assert client.get("/api/v1/jobs", headers=auth("dsk_bad_key")).status_code == 401
    job_id = _new_job(settings)
    client.get(f"/api/v1/jobs/{job_id}", headers=auth(api_key))  # another key's job: 404
    token = client.get("/").data.split(b'name="csrf_token" value="')[1].split(b'"')[0]
    r = client.post("/upload", data={"files": [(io.BytesIO(b"x" * 200), "a")],
                                     "csrf_token": token.decode()},
                    content_type="multipart/form-data")
    assert r.status_code == 303
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(IpLogEntry.kind, IpLogEntry.route, IpLogEntry.ip)
                               .order_by(IpLogEntry.id)).all()
    assert [(kind, route) for kind, route, _ in rows] == [
        ("api", "/api/v1/jobs"), ("api", "/api/v1/jobs"), ("api", "/api/v1/jobs/<job_id>"),
        ("upload", "/upload")]
    assert {ip for *_, ip in rows} == {"127.0.0.1"}


def test_a_sweep_killed_half_way_is_finished_by_the_next(settings, monkeypatch):
    """The scheduler dies (a BaseException, like SIGKILL it skips every handler) after some
    jobs were marked deleted and before their files went; a new scheduler misses nothing."""
    t = utcnow() + 2 * HOUR
    due = [_new_job(settings) for _ in range(5)]
    real_delete = storage.delete_job_files
    calls = []

    class Killed(BaseException):
        pass

    def dies_on_the_third(settings_, job_id):
        calls.append(job_id)
        if len(calls) == 3:
            raise Killed
        real_delete(settings_, job_id)

    monkeypatch.setattr(storage, "delete_job_files", dies_on_the_third)
    first = Scheduler(settings, clock=lambda: t)
    counted: Counter = Counter()
    with pytest.raises(Killed):
        retention.sweep(settings, t, counted)
    assert counted["upload"] == 3  # two finished, one marked deleted with its files left
    states = Counter(_state(settings, j) for j in due)
    assert states == {"deleted": 3, "queued": 2}
    assert sum(_has_files(settings, j) for j in due) == 3
    monkeypatch.setattr(storage, "delete_job_files", real_delete)
    del first  # its lease was never taken: the restarted scheduler leads at once

    counts = Scheduler(settings, clock=lambda: t).run_pass()
    assert counts["upload"] == 2 and counts["orphan"] == 1  # the half-deleted one's files
    assert counts["redis_job"] == 3  # the first sweep had purged two
    for job_id in due:
        assert _state(settings, job_id) == "deleted" and not _has_files(settings, job_id)
        assert _rq_entries(settings, job_id) == []


def test_orphans_on_disk_and_in_redis_are_found(settings):
    t = utcnow()
    old = t.timestamp() - 2 * 3600
    unknown = settings.jobs_dir / ("u" * 32)
    (unknown / "result").mkdir(parents=True)
    (unknown / "result" / "model.stl").write_bytes(b"\0" * 84)
    os.utime(unknown, (old, old))
    being_stored = settings.jobs_dir / ("n" * 32)  # its row is a moment away
    (being_stored / "upload").mkdir(parents=True)
    stray = settings.jobs_dir / "stray.tmp"
    stray.write_bytes(b"x")
    os.utime(stray, (old, old))
    deleted = _new_job(settings, state="deleted", deleted_at=t)  # files left by a crash
    done = _new_job(settings, state="done", finished_at=t, delete_after=t + HOUR)
    storage.upload_dir(settings, done).mkdir()  # the worker died before deleting it
    (storage.upload_dir(settings, done) / "000000.part").write_bytes(b"x")
    failed = _new_job(settings, state="failed", finished_at=t, delete_after=t + HOUR)
    storage.result_dir(settings, failed).mkdir()  # half a model, left by a crash
    stale_part = settings.incoming_dir / "part-stale"
    stale_part.write_bytes(b"x")
    os.utime(stale_part, (old, old))
    fresh_part = settings.incoming_dir / "part-fresh"
    fresh_part.write_bytes(b"x")
    # an RQ entry of a job that is gone, and one its worker is still running
    redis = connect(settings.redis_url)
    gone = jobs.new_job_id()
    RQJob.create("gpu_worker.tasks.run_conversion", args=(gone, 1), id=f"{gone}_r1",
                 connection=redis).save()
    busy = RQJob.create("gpu_worker.tasks.run_conversion", args=(deleted, 2),
                        id=f"{deleted}_r2", connection=redis)
    busy.set_status("started")
    busy.save()
    expired = jobs.new_job_id()  # its entry expired (result_ttl), its reference did not
    redis.zadd("rq:finished:bulk", {f"{expired}_r1": t.timestamp() - 5})

    counts = retention.sweep(settings, t)
    assert not unknown.exists() and not stray.exists() and being_stored.exists()
    assert not _has_files(settings, deleted)
    assert not storage.upload_dir(settings, done).exists()
    assert storage.result_path(settings, done, "stl").is_file()
    assert not storage.result_dir(settings, failed).exists()
    assert not stale_part.exists() and fresh_part.exists()
    assert counts["orphan"] == 3 and counts["upload"] == 1 and counts["result"] == 1
    assert counts["incoming"] == 1
    assert _rq_entries(settings, gone) == []
    assert redis.zrange("rq:finished:bulk", 0, -1) == []
    assert [f"rq:job:{deleted}_r2"] == [k for k in _rq_entries(settings, deleted)
                                        if k.startswith("rq:job:")]
    assert _rq_entries(settings, done)  # a live job's entry stays
    # the busy entry goes once its run has ended
    busy.set_status("finished")
    busy.save()
    assert retention.sweep(settings, t)["redis_job"] == 1
    assert _rq_entries(settings, deleted) == []


def test_two_schedulers_one_leads_and_the_other_takes_over(settings):
    t = utcnow() + 2 * HOUR
    first = _new_job(settings)
    a, b = Scheduler(settings, clock=lambda: t), Scheduler(settings, clock=lambda: t)
    b.lease = Lease(settings.redis_url, ttl_s=1)
    a.lease = Lease(settings.redis_url, ttl_s=1)
    assert a.run_pass()["upload"] == 1
    second = _new_job(settings)
    assert b.run_pass() == Counter()  # a leads: b only watches
    assert _gauge("dicomstl_scheduler_leader") == 0
    assert _gauge("dicomstl_retention_overdue_items", kind="upload") == 1
    assert _state(settings, second) == "queued"
    time.sleep(1.2)  # a stops renewing (it hangs, or died): its lease runs out
    assert b.run_pass()["upload"] == 1
    assert _gauge("dicomstl_scheduler_leader") == 1
    assert _gauge("dicomstl_retention_overdue_items", kind="upload") == 0
    assert a.lease.hold() is False  # it notices it lost the lease
    assert {_state(settings, j) for j in (first, second)} == {"deleted"}
    b.lease.release()
    assert connect(settings.redis_url).get(LEASE_KEY) is None


def test_two_sweeps_at_once_delete_each_item_once(settings):
    """Even without the lease (Redis unreachable, both sweep), no item is counted twice."""
    t = utcnow() + 2 * HOUR
    due = [_new_job(settings, state="done", finished_at=t - 2 * HOUR, delete_after=t - HOUR)
           for _ in range(24)]
    results: list[Counter] = []
    start = threading.Barrier(2)

    def sweep() -> None:
        start.wait()
        results.append(retention.sweep(settings, t))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 2
    assert results[0]["result"] + results[1]["result"] == len(due)
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(
            Job.state == "deleted")) == len(due)
    assert not any(_has_files(settings, j) for j in due)


def test_without_redis_the_sweep_goes_on_and_redis_is_cleaned_later(settings):
    """Deadlines do not wait for Redis: with it unreachable every replica sweeps (safe, as
    deletion is idempotent); the deleted jobs' queue entries go once it is back."""
    t = utcnow() + 2 * HOUR
    job_id = _new_job(settings)
    offline = replace(settings, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    scheduler = Scheduler(offline, clock=lambda: t)
    assert scheduler.lease.hold() is None
    counts = scheduler.run_pass()
    assert counts["upload"] == 1 and counts["redis_job"] == 0
    assert _state(settings, job_id) == "deleted" and not _has_files(settings, job_id)
    assert _rq_entries(settings, job_id)  # left behind while Redis was away
    assert Scheduler(settings, clock=lambda: t).run_pass()["redis_job"] == 1
    assert _rq_entries(settings, job_id) == []


def test_deadline_wake_ups_sweep_due_jobs_and_the_scans_run_once_per_interval(settings):
    """Between full passes (every ``sweep_interval_s``, 1 s here) a pass deletes the jobs
    that are due and nothing else: the scans of disk and Redis wait for the next full pass."""
    t = utcnow() + 2 * HOUR
    scheduler = Scheduler(settings, clock=lambda: t)
    assert scheduler.run_pass() == Counter()  # the first pass is a full one
    stale_part = settings.incoming_dir / "part-stale"
    stale_part.write_bytes(b"x")
    old = t.timestamp() - 2 * 3600
    os.utime(stale_part, (old, old))
    due = _new_job(settings)
    counts = scheduler.run_pass()
    assert counts == {"upload": 1, "redis_job": 1} and _state(settings, due) == "deleted"
    assert stale_part.exists()
    time.sleep(settings.sweep_interval_s + 0.05)
    assert scheduler.run_pass() == {"incoming": 1} and not stale_part.exists()
    scheduler.lease.release()


def test_the_leader_wakes_at_the_next_deadline_and_a_standby_waits_the_interval(settings):
    t = utcnow()
    leader, standby = Scheduler(settings, clock=lambda: t), Scheduler(settings, clock=lambda: t)
    leader.run_pass()
    standby.run_pass()
    assert leader.seconds_to_next_pass() == settings.sweep_interval_s  # nothing is due
    # with a 60 s interval, a job due in 15 s
    settings = replace(settings, sweep_interval_s=60)
    leader.settings = standby.settings = settings
    _new_job(settings, delete_after=t + dt.timedelta(seconds=15))
    assert 15 <= leader.seconds_to_next_pass() < 15.1
    assert standby.seconds_to_next_pass() == 60  # it deletes nothing: no reason to wake
    leader.lease.release()


def test_copies_of_mail_go_after_their_window(settings):
    from dicomstl import mail
    from scheduler import metrics

    settings = replace(settings, mail_keep_s=3600)
    old = mail.write(settings, mail.message(settings, "x@example.org", "old", "a link"))
    new = mail.write(settings, mail.message(settings, "x@example.org", "new", "a link"))
    now = utcnow()
    os.utime(old, (now.timestamp() - 3600 - 61,) * 2)
    metrics.observe(settings, now, leading=True)
    assert REGISTRY.get_sample_value("dicomstl_retention_overdue_items", {"kind": "mail"}) == 1
    counts = retention.sweep(settings, now)
    assert counts["mail"] == 1 and not old.exists() and new.exists()
    assert oct(new.stat().st_mode & 0o777) == "0o600"
    metrics.observe(settings, now, leading=True)
    assert REGISTRY.get_sample_value("dicomstl_retention_overdue_items", {"kind": "mail"}) == 0
