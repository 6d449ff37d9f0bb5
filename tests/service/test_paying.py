"""Paying for conversions through the form and the API: the free tier per address and day,
credits taken when a job is accepted and given back when it ends without a model, and the
402 answers (with a link to the pricing page) when neither covers an upload."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rq import Queue, SimpleWorker

from dicomstl import apikeys, credits, free_tier, jobs
from dicomstl.queue import connect
from tests.service.accounts_helpers import csrf, log_in, make_account
from tests.service.helpers import api_submit, auth, file_parts

JSON = {"Accept": "application/json"}


def _upload(client, series, headers=JSON):
    return client.post("/upload", data={"files": file_parts(series), "csrf_token": csrf(client)},
                       content_type="multipart/form-data", headers=headers)


def _upload_junk(client, tmp_path):
    """Upload a file that is no DICOM: accepted, then failed by the worker."""
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM\n" * 100)
    return client.post("/upload", data={"files": [(junk.open("rb"), "part")],
                                        "csrf_token": csrf(client)},
                       content_type="multipart/form-data", headers=JSON)


def _work(settings, queue: str) -> None:
    conn = connect(settings.redis_url)
    SimpleWorker([Queue(queue, connection=conn)], connection=conn).work(burst=True)


def test_the_free_tier_gives_a_few_conversions_a_day_per_address(settings, series):
    from web import create_app

    app = create_app(replace(settings, free_conversions_per_day=2))
    visitor = app.test_client()
    assert b'id="free-left">2<' in visitor.get("/").data
    assert [_upload(visitor, series).status_code for _ in range(2)] == [201, 201]
    third = _upload(visitor, series)
    assert third.status_code == 402
    assert "2 conversions for today" in third.json["error"]
    assert third.json["pricing_url"] == "/pricing"
    page = _upload(visitor, series, headers={})  # the HTML answer links to the prices
    assert page.status_code == 402 and b'id="error-link" class="button" href="/pricing"' \
        in page.data
    # another address has its own
    other = app.test_client()
    r = other.post("/upload", data={"files": file_parts(series), "csrf_token": csrf(other)},
                   content_type="multipart/form-data",
                   environ_base={"REMOTE_ADDR": "198.51.100.9"}, headers=JSON)
    assert r.status_code == 201


def test_a_free_conversion_without_a_model_is_given_back(settings, tmp_path):
    from web import create_app

    one = replace(settings, free_conversions_per_day=1)
    visitor = create_app(one).test_client()
    r = _upload_junk(visitor, tmp_path)
    assert r.status_code == 201
    assert free_tier.left(one, "127.0.0.1") == 0
    _work(settings, "interactive")
    assert jobs.get_job(settings, r.json["job"]).state == "failed"
    assert free_tier.left(one, "127.0.0.1") == 1  # it made no model: not counted


def test_an_upload_over_the_free_size_needs_credits(settings, series):
    from web import create_app

    app = create_app(replace(settings, free_upload_bytes=10_000))
    r = _upload(app.test_client(), series)
    assert r.status_code == 402
    assert r.json["error"] == ("the free tier converts uploads up to 9.77 kB; this one is "
                               "larger and needs credits (log in and buy some)")
    assert list(settings.incoming_dir.iterdir()) == []  # nothing kept
    # one announced as larger than that is refused from its headers, before its body
    body = io.BytesIO(b"x" * 1000)
    r = app.test_client().post("/upload", input_stream=body, headers={
        **JSON, "Content-Type": "multipart/form-data; boundary=x"},
        environ_overrides={"CONTENT_LENGTH": str(50 * 1024**2)})
    assert r.status_code == 402 and body.tell() == 0


def test_an_account_pays_with_credits_and_gets_them_back_without_a_model(app, settings,
                                                                        series, tmp_path):
    person = make_account(settings, "ann@example.org", credits_=2)
    client = app.test_client()
    log_in(client, person)
    assert b'id="credits">2<' in client.get("/").data
    good = _upload(client, series)
    assert good.status_code == 201
    bad = _upload_junk(client, tmp_path)
    assert bad.status_code == 201
    url = settings.database_url
    assert credits.balance(url, person.org_id) == 0
    _work(settings, "interactive")
    assert jobs.get_job(settings, good.json["job"]).state == "done"
    assert jobs.get_job(settings, bad.json["job"]).state == "failed"
    assert credits.balance(url, person.org_id) == 1  # the failed one's credit came back
    assert credits.ledger_total(url, person.org_id) == 1
    reasons = [(e.reason, e.delta) for e in reversed(credits.history(url, person.org_id))]
    assert reasons == [("grant", 2), ("job", -1), ("job", -1), ("refund", 1)]
    page = client.get("/account").get_data(as_text=True)
    assert 'id="credits">1<' in page and 'id="used">1<' in page


def test_a_job_deleted_before_it_is_done_gives_its_credit_back_once(app, settings, series):
    person = make_account(settings, "ben@example.org", credits_=1)
    client = app.test_client()
    log_in(client, person)
    job_id = _upload(client, series).json["job"]
    assert credits.balance(settings.database_url, person.org_id) == 0
    token = csrf(client, f"/jobs/{job_id}")
    assert client.post(f"/jobs/{job_id}/delete", data={"csrf_token": token}).status_code == 303
    jobs.delete_job(settings, job_id, None)  # again (the scheduler, say): no second refund
    assert credits.balance(settings.database_url, person.org_id) == 1
    assert credits.ledger_total(settings.database_url, person.org_id) == 1


def test_an_account_without_credits_uses_the_free_tier_then_gets_402(settings, series):
    from web import create_app

    app = create_app(replace(settings, free_conversions_per_day=1))
    person = make_account(settings, "cat@example.org")
    client = app.test_client()
    log_in(client, person)
    first = _upload(client, series)
    assert first.status_code == 201 and first.json["job"]
    assert jobs.get_job(settings, first.json["job"]).credits == 0
    second = _upload(client, series)
    assert second.status_code == 402
    assert second.json["balance"] == 0 and second.json["needed"] == 1
    assert "not enough credits" in second.json["error"]


def test_larger_uploads_cost_more_credits(settings, series):
    from web import create_app

    cheap_block = replace(settings, credit_upload_bytes=4096)  # the series is ~12 blocks
    app = create_app(cheap_block)
    person = make_account(settings, "dan@example.org", credits_=100)
    client = app.test_client()
    log_in(client, person)
    size = sum(p.stat().st_size for p in series)
    r = _upload(client, series)
    assert r.status_code == 201
    expected = -(-size // 4096)
    assert jobs.get_job(settings, r.json["job"]).credits == expected > 1
    assert credits.balance(settings.database_url, person.org_id) == 100 - expected


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_api_answers_402_naming_the_balance(app, settings, series):
    person = make_account(settings, "eli@example.org", credits_=1)
    key = apikeys.create_key(settings.database_url, "clinic", person.org_id, person.user_id)
    client = app.test_client()
    assert api_submit(client, key, series).status_code == 201
    r = api_submit(client, key, series)
    assert r.status_code == 402
    assert r.json == {"error": "not enough credits: the balance is 0 and this upload needs 1",
                      "balance": 0, "needed": 1, "pricing_url": "/pricing"}
    assert client.get("/api/v1/account", headers=auth(key)).json["credits"] == 0
    # an idempotent retry of the job it paid for is answered with that job, not 402
    first = api_submit(client, key, series, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 402
    with_credit = make_account(settings, "fox@example.org", credits_=1)
    key2 = apikeys.create_key(settings.database_url, "clinic", with_credit.org_id)
    made = api_submit(client, key2, series, headers={"Idempotency-Key": "k1"})
    again = api_submit(client, key2, series, headers={"Idempotency-Key": "k1"})
    assert made.status_code == 201 and again.status_code == 200
    assert again.json["id"] == made.json["id"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_operator_key_pays_nothing(app, settings, api_key, series):
    r = api_submit(app.test_client(), api_key, series)
    assert r.status_code == 201 and r.json["credits"] == 0
    assert app.test_client().get("/api/v1/account", headers=auth(api_key)).status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_big_upload_without_credits_is_refused_before_its_body(settings, series):
    """The 402 comes from the headers: a client that sends ``Expect: 100-continue`` (or a
    slow one) is not made to send a gigabyte first."""
    from web import create_app

    app = create_app(settings)
    person = make_account(settings, "gia@example.org")
    key = apikeys.create_key(settings.database_url, "clinic", person.org_id)
    client = app.test_client()
    body = io.BytesIO(b"x" * 1000)
    r = client.post("/api/v1/jobs", input_stream=body, headers={
        **auth(key), "Content-Type": "multipart/form-data; boundary=x"},
        environ_overrides={"CONTENT_LENGTH": str(600 * 1024**2)})
    assert r.status_code == 402 and r.json["needed"] == 2
    assert body.tell() == 0  # not a byte read
