"""Faults injected into the running service (real redis-server, databases, gunicorn, worker
and scheduler processes; ``faults.py``), a few jobs each: after a worker or Redis or the
scheduler or the web app is killed, PostgreSQL's connections are cut for 30 s, or the data
disk is full, every accepted job ends done or failed with a clear message (none lost), the
credits add up (models paid once, everything else refunded once), no file outlives its
deadline, and a new job converts without a manual step."""

from __future__ import annotations

import os

import pytest

from gpu_worker.tasks import DISK_FULL_MESSAGE, INTERNAL_MESSAGE
from tests.robustness import faults

pytestmark = pytest.mark.slow

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def assert_survived(outcome: faults.Outcome) -> None:
    """The invariants every fault must keep."""
    assert outcome.accepted > 0, outcome
    assert outcome.lost == 0, outcome
    assert outcome.done + outcome.failed_with_message == outcome.accepted, outcome
    assert outcome.credits_ok, outcome.credit_problems
    assert outcome.files_past_deadline == 0, outcome
    assert outcome.recovered, outcome
    assert INTERNAL_MESSAGE not in outcome.messages, outcome


@SQLITE
def test_a_worker_killed_mid_job_on_a_real_series(database_url, tmp_path, shared_dicom):
    outcome = faults.worker_sigkill(tmp_path, database_url,
                                    [shared_dicom / "mr-enhanced-sag" / p.name for p in
                                     sorted((shared_dicom / "mr-enhanced-sag").iterdir())],
                                    n=3, options={})
    assert_survived(outcome)
    assert outcome.done == outcome.accepted == 3  # the lost run ran again
    assert outcome.extra["lost_runs"] >= 1


@SQLITE
@pytest.mark.parametrize("persistent", [True, False], ids=["appendonly", "volatile"])
def test_redis_killed_and_restarted_mid_queue(database_url, tmp_path, series, persistent):
    outcome = faults.redis_restart(tmp_path, database_url, series, n=4, persistent=persistent)
    assert_survived(outcome)
    assert outcome.done == outcome.accepted == 4
    # uploads while it was down: a clear 503, nothing kept, nothing paid
    assert outcome.extra["refused_during_outage"] == [503, 503]
    assert outcome.refused_with_message == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_connections_cut_for_30_s(database_url, tmp_path, series):
    outcome = faults.postgres_cut(tmp_path, database_url, series, n=4, cut_s=30)
    assert outcome.extra["backends_terminated"] > 0
    assert_survived(outcome)
    # every upload got an answer; one that met a cut connection is a 503 with Retry-After
    # (never a 500), and kept nothing and took no credit (checked above)
    assert outcome.no_answer == 0 and outcome.refused_500 == 0, outcome.extra["refusals"]
    assert outcome.submitted == outcome.accepted + outcome.refused_with_message


@SQLITE
def test_the_data_disk_full(database_url, tmp_path, series):
    if not faults.can_mount_tmpfs(tmp_path):
        message = "cannot mount a tmpfs here (needs root)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the disk-full scenario")
        pytest.skip(message)
    outcome = faults.disk_full(tmp_path, database_url, series, n=3)
    assert_survived(outcome)
    assert outcome.extra["left_on_disk"] == []  # refused and failed jobs freed their space
    # models that did not fit: failed at once with a message that says so
    assert outcome.messages == [DISK_FULL_MESSAGE], outcome.messages
    # uploads that did not fit: a 507 that says so, nothing kept
    assert outcome.no_answer == 0 and outcome.extra["refused_while_full"] == 3
    assert outcome.refused_500 == 0 and outcome.refused_with_message == 3, outcome.extra


@SQLITE
def test_the_scheduler_killed_mid_sweep(database_url, tmp_path, series):
    outcome = faults.scheduler_sigkill(tmp_path, database_url, series, n=4)
    assert_survived(outcome)
    assert outcome.extra["deleted_when_killed"][0] >= 1
    assert outcome.extra["not_deleted"] == 0
    # the restarted scheduler took its own lease back: no wait for it to run out (12 s)
    assert outcome.deletion_late_s < 6, outcome.deletion_late_s


@SQLITE
def test_the_web_app_killed_mid_upload(database_url, tmp_path, series):
    outcome = faults.web_sigkill(tmp_path, database_url, series, n=3, uploads=2)
    assert outcome.extra["parts_when_killed"] == 2
    assert_survived(outcome)
    assert outcome.extra["parts_left"] == 0  # the partial uploads went by their deadline
    # no job and no charge for the uploads that never finished: only the ones made after
    assert outcome.extra["jobs_of_account"] == outcome.accepted + 1


def test_the_scheduler_keeps_its_lease_across_a_persistent_redis_restart(tmp_path):
    """A Redis blip must not make the leading scheduler a standby of itself: with persistence
    the lease comes back holding its token, and its next pass renews it (before the fix it
    waited for the lease to run out, and deletions with it)."""
    from scheduler.lease import Lease

    service = faults.Service(tmp_path, "sqlite://", persistent_redis=True)
    service.start_redis()
    try:
        lease = Lease(service.env["REDIS_URL"], ttl_s=60)
        assert lease.hold() is True
        service.kill_redis()
        assert lease.hold() is None  # unreachable: sweeps without the lease meanwhile
        service.start_redis()
        assert lease.hold() is True
        assert Lease(service.env["REDIS_URL"], ttl_s=60).hold() is False  # one leader
    finally:
        service.stop()


def test_a_scheduler_restarted_in_place_takes_its_own_lease_back(tmp_path):
    """Killed leaders leave their lease in Redis; the same replica restarted (same host and
    supervisor: the same token) leads again at once, another replica still waits."""
    from scheduler.lease import Lease

    service = faults.Service(tmp_path, "sqlite://")
    service.start_redis()
    try:
        url = service.env["REDIS_URL"]
        assert Lease(url, ttl_s=60, replica="host-a:1").hold() is True  # then killed
        assert Lease(url, ttl_s=60, replica="host-b:1").hold() is False
        again = Lease(url, ttl_s=60, replica="host-a:1")
        assert again.hold() is True and again.hold() is True  # and renews it
        assert Lease(url, ttl_s=60).hold() is False
    finally:
        service.stop()


def test_the_scheduler_takes_the_lease_anew_after_a_volatile_redis_restart(tmp_path):
    from scheduler.lease import Lease

    service = faults.Service(tmp_path, "sqlite://")
    service.start_redis()
    try:
        lease = Lease(service.env["REDIS_URL"], ttl_s=60)
        assert lease.hold() is True
        service.kill_redis()
        assert lease.hold() is None
        service.start_redis()  # empty: the lease is gone
        assert lease.hold() is True
        assert Lease(service.env["REDIS_URL"], ttl_s=60).hold() is False
    finally:
        service.stop()
