"""The privacy rights: the export holds everything we keep about an account; erasure leaves
nothing of it in any table, file or Redis key (but the payment references the law keeps,
unlinked); the privacy page states the windows the scheduler enforces; the contact form."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from rq import Queue, SimpleWorker
from sqlalchemy import inspect, select, text

from dicomstl import apikeys, jobs, organisations
from dicomstl.db import CreditEntry, Inquiry, engine_for, session_scope, utcnow
from dicomstl.queue import connect
from dicomstl.retention_policy import ROW_RULES, duration_words
from tests.service.accounts_helpers import csrf, log_in, mails, make_account
from tests.service.helpers import auth, file_parts


def _work(settings, queue: str) -> None:
    conn = connect(settings.redis_url)
    SimpleWorker([Queue(queue, connection=conn)], connection=conn).work(burst=True)


def _busy_account(app, settings, series, email: str):
    """An account that has used everything: a converted job and a queued one, an API key
    (used), a purchase and jobs in its ledger, IP log rows, an inquiry, mail."""
    person = make_account(settings, email, credits_=5)
    with session_scope(settings.database_url) as session:  # a payment Stripe confirmed
        session.add(CreditEntry(org_id=person.org_id, delta=10, reason="purchase",
                                stripe_ref=f"cs_test_{person.user_id}", amount_cents=1900,
                                currency="eur", created_at=utcnow()))
        session.execute(text("UPDATE organisations SET credits = credits + 10 WHERE id = :id"),
                        {"id": person.org_id})
    browser = app.test_client()
    log_in(browser, person)
    key = apikeys.create_key(settings.database_url, "PACS", person.org_id, person.user_id)
    done = browser.post("/api/v1/jobs", data={"files": file_parts(series)},
                        content_type="multipart/form-data", headers=auth(key)).json["id"]
    _work(settings, "bulk")
    assert jobs.get_job(settings, done).state == "done"
    queued = browser.post("/upload", data={"files": file_parts(series),
                                           "csrf_token": csrf(browser)},
                          content_type="multipart/form-data",
                          headers={"Accept": "application/json"}).json["job"]
    browser.post("/contact", data={"csrf_token": csrf(browser, "/contact"),
                                   "email": person.email, "message": "a question"})
    browser.post("/reset", data={"csrf_token": csrf(browser, "/reset"),
                                 "email": person.email})  # a mail in the mail folder
    assert mails(settings, person.email)
    return person, browser, key, [done, queued]


def test_the_export_holds_everything_kept_about_the_account(app, settings, series):
    person, browser, key, job_ids = _busy_account(app, settings, series, "ava@example.org")
    r = browser.get("/api/v1/account/export")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    assert "attachment" in r.headers["Content-Disposition"]
    data = r.json
    assert data["account"]["email"] == person.email
    assert data["organisation"]["credits"] == 13 and data["organisation"]["your_role"] == "owner"
    assert [k["prefix"] for k in data["api_keys"]] == [key.key.split("_")[1]]
    assert key.key not in json.dumps(data)  # prefixes only
    assert sorted(j["id"] for j in data["jobs"]) == sorted(job_ids)
    assert data["payments"] == [{"stripe_reference": f"cs_test_{person.user_id}",
                                 "credits": 10, "amount_cents": 1900, "currency": "eur",
                                 "created_at": data["payments"][0]["created_at"]}]
    assert sum(e["delta"] for e in data["credit_ledger"]) == 13
    assert {row["kind"] for row in data["ip_log"]} >= {"login", "upload", "account"}
    assert [i["message"] for i in data["inquiries"]] == ["a question"]
    assert {p["what"] for p in data["retention"]} >= {rule.what for rule in ROW_RULES}
    # the organisation's key exports the organisation, nobody's profile
    by_key = browser.get("/api/v1/account/export", headers=auth(key))
    assert by_key.json["account"] is None and by_key.json["ip_log"] == []
    assert by_key.json["organisation"]["members"] == [{"email": person.email, "role": "owner"}]


def _everything(settings) -> tuple[list[str], list[tuple[str, str, object]]]:
    """Every text in the database (table.column: value) and every row's id-like columns."""
    engine = engine_for(settings.database_url)
    texts, ids = [], []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    texts.append(f"{table}.{column}: {value}")
                    if column in ("org_id", "user_id", "account_id", "created_by",
                                  "invited_by", "api_key_id"):
                        ids.append((table, column, value))
    return texts, ids


def _files(settings) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in settings.data_dir.rglob("*") if p.is_file()
            and p.name != "dicomstl.db-wal"]


def _redis_value(conn, key: bytes):
    kind = conn.type(key).decode()
    if kind == "string":
        return conn.get(key)
    if kind == "hash":
        return conn.hgetall(key)
    if kind == "list":
        return conn.lrange(key, 0, -1)
    if kind == "set":
        return conn.smembers(key)
    if kind == "zset":
        return conn.zrange(key, 0, -1)
    if kind == "stream":
        return conn.xrange(key)
    return b""


def _redis(settings) -> list[str]:
    """Every Redis key with its value, as text."""
    conn = connect(settings.redis_url)
    return [f"{key!r} {_redis_value(conn, key)!r}" for key in conn.scan_iter(count=1000)]


def test_erasure_leaves_nothing_of_the_account(app, settings, series):
    person, browser, key, job_ids = _busy_account(app, settings, series, "Bea@Example.org")
    prefix = key.key.split("_")[1]
    limit_id = apikeys.rate_limit_id(apikeys.authenticate(settings.database_url, key.key))
    assert any(limit_id in entry for entry in _redis(settings))  # its API calls were counted
    # a wrong password erases nothing
    wrong = browser.post("/account/erase", data={"csrf_token": csrf(browser, "/account"),
                                                 "erase-password": "not it at all"})
    assert wrong.status_code == 400 and browser.get("/account").status_code == 200
    r = browser.post("/account/erase", data={"csrf_token": csrf(browser, "/account"),
                                             "erase-password": person.password})
    assert r.status_code == 200 and b"Your account is erased" in r.data
    assert b"keep 1 payment reference(s)" in r.data and b"10 years" in r.data
    assert browser.get("/account").status_code == 302  # logged out
    assert browser.get("/api/v1/jobs", headers=auth(key)).status_code == 401

    needles = [person.email, "bea@example.org", prefix, limit_id, *job_ids,
               f"org:{person.org_id}"]
    texts, ids = _everything(settings)
    for needle in needles:
        assert not [t for t in texts if needle.lower() in t.lower()], needle
    assert not [i for i in ids if i[2] in (person.user_id, person.org_id)
                and i[:2] != ("credit_ledger", "org_id")], ids
    for name, content in _files(settings):
        for needle in needles:
            assert needle.encode() not in content and needle not in name, (name, needle)
    for entry in _redis(settings):
        for needle in (person.email, prefix, limit_id, *job_ids):
            assert needle not in entry, (needle, entry)
    # what the law keeps: the payment's reference, amount and date, linked to no one
    with session_scope(settings.database_url) as session:
        kept = session.scalars(select(CreditEntry)).all()
    assert [(e.stripe_ref, e.amount_cents, e.org_id, e.job_id, e.erased_at is not None)
            for e in kept] == [(f"cs_test_{person.user_id}", 1900, None, None, True)]
    # the address can make a new, empty account
    again = make_account(settings, person.email)
    assert again.user_id != person.user_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_erasing_a_member_leaves_the_clinic_its_things(app, settings, series):
    owner = make_account(settings, "cal@example.org", credits_=3)
    member = make_account(settings, "dee@example.org")
    url = settings.database_url
    token = organisations.invite(url, owner.org_id, owner.user_id, member.email)
    organisations.accept(url, token, member.user_id)
    key = apikeys.create_key(url, "ward", owner.org_id, member.user_id)
    part = settings.incoming_dir / "part-1"
    part.write_bytes(b"x" * 100)
    job, _ = jobs.create_job(settings, f"org:{owner.org_id}", {}, [part], "interactive")
    # the owner leaves by erasure: the member owns the clinic now, with its job and key
    browser = app.test_client()
    log_in(browser, owner)
    r = browser.post("/account/erase", data={"csrf_token": csrf(browser, "/account"),
                                             "erase-password": owner.password})
    assert r.status_code == 200 and b"left your organisation" in r.data
    place = organisations.place_of(url, member.user_id)
    assert place.owner and place.org.id == owner.org_id and place.org.credits == 3
    assert jobs.get_job(settings, job.id).state == "queued"
    assert apikeys.authenticate(url, key.key) is not None
    texts, _ids = _everything(settings)
    assert not [t for t in texts if owner.email in t]


def test_the_privacy_page_states_the_windows_the_scheduler_enforces(settings):
    from web import create_app

    shorter = replace(settings, result_ttl_s=1800, mail_keep_s=2 * 86400)
    page = create_app(shorter).test_client().get("/privacy").get_data(as_text=True)
    for rule in ROW_RULES:
        assert rule.what in page
        if rule.window:
            assert duration_words(rule.window.total_seconds()) in page
    assert "30 minutes after the conversion" in page and "2 days" in page
    cookies = create_app(shorter).test_client().get("/cookies").get_data(as_text=True)
    assert "<code>session</code>" in cookies and cookies.count("<tr>") == 2  # one cookie


def test_the_contact_form_stores_the_inquiry(app, settings):
    client = app.test_client()
    r = client.post("/contact", data={"csrf_token": csrf(client, "/contact"),
                                      "email": "Zed@Example.org", "message": "  Hello?  "})
    assert r.status_code == 200 and b"Thank you" in r.data
    empty = client.post("/contact", data={"csrf_token": csrf(client, "/contact"),
                                          "email": "zed@example.org", "message": " "})
    assert empty.status_code == 400
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(Inquiry)).all()
    assert [(i.email, i.message, i.account_id) for i in rows] == [
        ("zed@example.org", "Hello?", None)]


def test_every_page_carries_the_security_headers_and_loads_nothing_from_elsewhere(app):
    client = app.test_client()
    for path in ("/", "/login", "/register", "/pricing", "/privacy", "/cookies", "/contact",
                 "/api", "/no-such-page"):
        r = client.get(path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "DENY", path
        assert r.headers["Referrer-Policy"] == "same-origin", path
        body = r.get_data(as_text=True)
        assert "http://" not in body.replace("http://localhost", "") or path == "/api"
        assert "https://" not in body, path
