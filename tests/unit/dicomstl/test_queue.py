"""RQ entry names: one per run and one callback per job, and reading a job id back from a
Redis key (what the scheduler's scan of Redis relies on)."""

from __future__ import annotations

from dicomstl import queue as q

JOB = "AbCdEfGhIjKlMnOpQrStUvWx_-12345"


def test_entry_ids_name_each_run_and_the_callback():
    assert q.run_entry_id(JOB, 3) == f"{JOB}_r3"
    assert q.callback_entry_id(JOB) == f"{JOB}_cb"
    assert q.entry_ids(JOB, 2) == [f"{JOB}_r1", f"{JOB}_r2", f"{JOB}_cb"]


def test_a_redis_key_names_its_job_only_when_it_is_one_of_our_entries():
    for name in (q.run_entry_id(JOB, 12), q.callback_entry_id(JOB)):
        assert q.job_of_key(f"rq:job:{name}") == JOB
        assert q.job_of_key(f"rq:results:{name}") == JOB
    for key in (f"rq:queue:{JOB}_r1", f"rq:job:{JOB}", f"rq:job:{JOB}_x1", "rq:job:short_r1",
                f"dicomstl:scheduler:leader:{JOB}_r1"):
        assert q.job_of_key(key) is None, key
