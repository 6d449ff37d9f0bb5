"""Credits under concurrency, over real HTTP to the real web app under gunicorn, on SQLite
and on PostgreSQL: many submissions at once never take more credits than there are, and
jobs deleted twice at once give their credits back once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import select

from dicomstl import apikeys, credits
from dicomstl.db import CreditEntry, Job, session_scope
from tests.service.accounts_helpers import make_account
from tests.service.helpers import auth

SUBMISSIONS = 20
CREDITS = 5


@pytest.mark.slow
def test_20_concurrent_submissions_on_5_credits_take_exactly_5(web_url, settings, series):
    url = settings.database_url
    assert not settings.billing_enabled  # every account key works, and takes credits
    me = make_account(settings, "pacs@clinic.example.org", credits_=CREDITS)
    key = apikeys.create_key(url, "PACS", me.org_id, me.user_id)
    files = [("files", (p.name, p.read_bytes())) for p in series]
    start = threading.Barrier(SUBMISSIONS)
    answers: list[requests.Response | BaseException] = []

    def submit() -> None:
        start.wait()
        try:
            answers.append(requests.post(web_url + "/api/v1/jobs", files=files,
                                         headers=auth(key), timeout=60))
        except BaseException as exc:  # reported below, with the others
            answers.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(SUBMISSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(answers) == SUBMISSIONS and all(isinstance(a, requests.Response)
                                               for a in answers), answers
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * CREDITS + [402] * (SUBMISSIONS - CREDITS), \
        [(a.status_code, a.text[:200]) for a in answers]
    for refused in (a.json() for a in answers if a.status_code == 402):
        assert refused["balance"] == 0 and refused["needed"] == 1, refused
        assert "not enough credits" in refused["error"]
        assert refused["pricing_url"] == "/pricing"

    made = {a.json()["id"] for a in answers if a.status_code == 201}
    assert credits.balance(url, me.org_id) == 0
    assert credits.ledger_total(url, me.org_id) == 0
    with session_scope(url) as session:
        jobs = session.execute(select(Job.id, Job.owner, Job.credits)).all()
        taken = session.scalars(select(CreditEntry.job_id).where(
            CreditEntry.reason == "job")).all()
    assert {j.id for j in jobs} == made == set(taken) and len(taken) == CREDITS
    assert all((j.owner, j.credits) == (f"org:{me.org_id}", 1) for j in jobs)
    # the refused uploads are not kept
    assert {p.name for p in settings.jobs_dir.iterdir()} == made
    assert list(settings.incoming_dir.iterdir()) == []

    # Each job deleted before it was converted gives its credit back, once, though every
    # one is deleted twice at the same moment.
    targets = sorted(made) * 2
    again = threading.Barrier(len(targets))

    def delete(job_id: str) -> int:
        again.wait()
        return requests.delete(f"{web_url}/api/v1/jobs/{job_id}", headers=auth(key),
                               timeout=60).status_code

    with ThreadPoolExecutor(len(targets)) as pool:
        assert set(pool.map(delete, targets)) == {200}
    assert credits.balance(url, me.org_id) == credits.ledger_total(url, me.org_id) == CREDITS
    with session_scope(url) as session:
        refunds = session.scalars(select(CreditEntry.job_id).where(
            CreditEntry.reason == "refund")).all()
    assert sorted(refunds) == sorted(made)
