"""Accounts through the browser's forms (Flask's test client, a real Redis, SQLite and
PostgreSQL): registration with a confirmation link from the mail folder, login, logout,
lockout, password reset, sessions, claiming anonymous jobs, the account page's keys and the
organisation's members."""

from __future__ import annotations

import logging
import re
import statistics
import time
from dataclasses import replace

import pytest
from argon2 import PasswordHasher
from itsdangerous.timed import TimestampSigner

from dicomstl import accounts, apikeys, credits, jobs, organisations
from dicomstl.db import User, session_scope
from tests.service.accounts_helpers import (
    PASSWORD,
    Person,
    csrf,
    link_in,
    log_in,
    mails,
    make_account,
)
from tests.service.helpers import auth, file_parts


def _register(client, address: str, password: str = PASSWORD):
    return client.post("/register", data={"csrf_token": csrf(client, "/register"),
                                          "email": address, "password": password,
                                          "repeat": password})


def test_register_confirm_by_the_mailed_link_then_log_in(app, settings):
    client = app.test_client()
    r = _register(client, "Ada@Example.org")
    assert r.status_code == 200 and b"Check your e-mail" in r.data
    # not confirmed yet: the right password is told to confirm first
    r = log_in(client, Person("ada@example.org", PASSWORD, 0, 0))
    assert r.status_code == 303 and r.headers["Location"].endswith("/confirm")
    (msg,) = mails(settings, "ada@example.org")
    assert msg["Subject"] == "Confirm your e-mail address for dicomstl"
    r = client.get(link_in(msg, "/confirm/"))
    assert r.status_code == 303 and r.headers["Location"].endswith("/login")
    r = log_in(client, Person("ada@example.org", PASSWORD, 0, 0))
    assert r.status_code == 303 and r.headers["Location"].endswith("/account")
    page = client.get("/account")
    assert page.status_code == 200 and b"ada@example.org" in page.data
    assert b'id="credits">0<' in page.data
    # a damaged link is refused
    assert client.get(link_in(msg, "/confirm/")[:-3] + "xyz").status_code == 400


def test_registering_an_address_again_answers_alike_and_mails_its_owner(app, settings):
    make_account(settings, "bo@example.org", password="the first password!")
    client = app.test_client()
    new = _register(client, "new@example.org")
    again = _register(client, "BO@example.org")
    assert new.status_code == again.status_code == 200
    assert new.data.split(b"<main>")[1].split(b"</main>")[0].replace(b"new@", b"bo@") \
        == again.data.split(b"<main>")[1].split(b"</main>")[0]
    (msg,) = mails(settings, "bo@example.org")
    assert "tried to register" in msg["Subject"] and "/reset" in msg.get_content()
    # the old password still works: the account was not touched
    assert accounts.log_in(settings, "bo@example.org", "the first password!").user is not None


def test_register_refuses_bad_input_with_clear_messages(app):
    client = app.test_client()
    assert b"not an e-mail address" in _register(client, "not-an-address").data
    short = _register(client, "c@example.org", "short")
    assert short.status_code == 400 and b"must be 10 to 1000 characters" in short.data
    missing = client.post("/register", data={"email": "d@example.org", "password": PASSWORD,
                                             "repeat": PASSWORD})
    assert missing.status_code == 400 and b"CSRF" in missing.data  # no token: refused


def test_unknown_address_and_wrong_password_get_the_same_answer_and_time(app, settings,
                                                                        monkeypatch):
    person = make_account(settings, "eve@example.org")
    verified = []
    original = PasswordHasher.verify
    monkeypatch.setattr(PasswordHasher, "verify",
                        lambda self, h, p: verified.append(1) or original(self, h, p))
    client = app.test_client()
    answers, times = {}, {"unknown": [], "wrong": []}
    for _ in range(5):
        for kind, address in (("unknown", "nobody@example.org"), ("wrong", person.email)):
            verified.clear()
            start = time.perf_counter()
            r = client.post("/login", data={"csrf_token": csrf(client, "/login"),
                                            "email": address, "password": "wrong password!"})
            times[kind].append(time.perf_counter() - start)
            assert len(verified) == 1  # one argon2 verification either way
            body = r.data.split(b"<main>")[1].split(b"</main>")[0].replace(
                address.encode(), b"ADDRESS")
            # the form's new CSRF token carries the second it was made in
            body = re.sub(rb'(name="csrf_token" type="hidden" value=)"[^"]*"', rb'\1"TOKEN"',
                          body)
            answers[kind] = (r.status_code, body)
    assert answers["unknown"] == answers["wrong"] and answers["wrong"][0] == 401
    ratio = statistics.median(times["unknown"]) / statistics.median(times["wrong"])
    assert 0.5 < ratio < 2, times


def test_repeated_failures_lock_the_account_and_mail_a_notice(app, settings):
    settings = replace(settings, login_lockout_after=3, login_lockout_s=2)
    from web import create_app

    client = create_app(settings).test_client()
    person = make_account(settings, "fay@example.org")
    for _ in range(3):
        assert log_in(client, person, "wrong password!").status_code == 401
    locked = log_in(client, person)  # the right password, but locked: the same answer
    assert locked.status_code == 401 and b"is wrong" in locked.data
    notices = mails(settings, person.email)
    assert [m["Subject"] for m in notices] == ["Your dicomstl account is locked for a while"]
    assert "/reset" in notices[0].get_content()
    time.sleep(2.1)
    assert log_in(client, person).status_code == 303  # the lock ends on its own


def test_login_replaces_the_session_and_claims_the_anonymous_jobs(app, settings, series):
    person = make_account(settings, "gus@example.org")
    client = app.test_client()
    token = csrf(client)
    r = client.post("/upload", data={"files": file_parts(series[:4]), "csrf_token": token},
                    content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert r.status_code == 201
    job_id = r.json["job"]
    before = client.get_cookie("session").value
    r = log_in(client, person)
    assert r.status_code == 303
    assert b"1 job(s) you made before logging in" in client.get(r.headers["Location"]).data
    assert client.get_cookie("session").value != before
    assert csrf(client) != token  # a new CSRF token: nothing of the old session carries over
    assert jobs.get_job(settings, job_id).owner == f"org:{person.org_id}"
    assert client.get(f"/jobs/{job_id}").status_code == 200
    # another browser of the account sees it; a stranger's does not
    other = app.test_client()
    log_in(other, person)
    assert other.get(f"/jobs/{job_id}").status_code == 200
    assert app.test_client().get(f"/jobs/{job_id}").status_code == 404


def test_logout_ends_the_session(app, settings):
    person = make_account(settings, "hal@example.org")
    client = app.test_client()
    log_in(client, person)
    assert client.get("/account").status_code == 200
    r = client.post("/logout", data={"csrf_token": csrf(client)})
    assert r.status_code == 303
    assert client.get("/account").status_code == 302  # to the login page


def test_password_reset_works_once_and_ends_every_session(app, settings, caplog):
    person = make_account(settings, "ida@example.org")
    elsewhere = app.test_client()
    log_in(elsewhere, person)
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        r = client.post("/reset", data={"csrf_token": csrf(client, "/reset"),
                                        "email": person.email})
        unknown = client.post("/reset", data={"csrf_token": csrf(client, "/reset"),
                                              "email": "nobody@example.org"})
    assert r.data.split(b"<main>")[1] == unknown.data.split(b"<main>")[1]
    (msg,) = mails(settings, person.email)
    path = link_in(msg, "/reset/")
    token = path.rsplit("/", 1)[1]
    assert token not in caplog.text and person.email not in caplog.text  # no token in the log
    form = {"csrf_token": csrf(client, path), "password": "a brand new password",
            "repeat": "a brand new password"}
    assert client.post(path, data=form).status_code == 303
    assert client.get(path).status_code == 400  # used: the password hash it names changed
    assert elsewhere.get("/account").status_code == 302  # that session ended
    assert log_in(client, person, "a brand new password").status_code == 303


def test_a_reset_link_older_than_an_hour_is_refused(app, settings, monkeypatch):
    person = make_account(settings, "jo@example.org")
    user = accounts.get_user(settings.database_url, person.user_id)
    from dicomstl import tokens

    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 3601)
    old = tokens.make(settings.secret_key, "reset",
                      {"u": user.id, "f": tokens.fingerprint(user.password_hash)})
    monkeypatch.undo()
    r = app.test_client().get(f"/reset/{old}")
    assert r.status_code == 400 and b"older than one hour" in r.data
    # and a confirmation token is no reset token
    confirm = tokens.make(settings.secret_key, "confirm", {"u": user.id, "e": user.email})
    assert app.test_client().get(f"/reset/{confirm}").status_code == 400


def test_the_session_cookie_is_httponly_lax_and_secure_over_https(settings):
    from web import create_app

    person = make_account(settings, "kai@example.org")
    plain = create_app(settings).test_client()
    log_in(plain, person)
    cookie = plain.get_cookie("session")
    assert cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    # behind one proxy that says the client came over HTTPS: Secure, and HSTS
    proxied = create_app(replace(settings, proxy_hops=1)).test_client()
    page = proxied.get("/login", headers={"X-Forwarded-Proto": "https",
                                          "X-Forwarded-For": "198.51.100.4"})
    set_cookie = page.headers["Set-Cookie"]
    assert "Secure" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "max-age=31536000" in page.headers["Strict-Transport-Security"]
    # served over HTTPS directly: logging in works (the CSRF check wants a same-site Referer)
    secure = create_app(settings).test_client()
    token = csrf(secure, "https://localhost/login")
    r = secure.post("https://localhost/login", headers={"Referer": "https://localhost/login"},
                    data={"csrf_token": token, "email": person.email,
                          "password": person.password})
    assert r.status_code == 303 and "Secure" in r.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in plain.get("/").headers  # only over HTTPS


def test_api_keys_from_the_account_page(app, settings, series):
    person = make_account(settings, "lea@example.org", credits_=2)
    client = app.test_client()
    log_in(client, person)
    made = client.post("/account/keys", data={"csrf_token": csrf(client, "/account"),
                                              "name": "PACS export"})
    assert made.status_code == 201
    page = made.get_data(as_text=True)
    key = page.split('id="new-key">')[1].split("<")[0]
    assert key.startswith("dsk_") and "PACS export" in page
    assert key not in client.get("/account").get_data(as_text=True)  # shown once
    row = apikeys.authenticate(settings.database_url, key)
    assert row.org_id == person.org_id and row.created_by == person.user_id
    # the key's jobs are the organisation's, and take its credits
    r = client.post("/api/v1/jobs", data={"files": file_parts(series)},
                    content_type="multipart/form-data", headers=auth(key))
    assert r.status_code == 201 and r.json["credits"] == 1
    assert credits.balance(settings.database_url, person.org_id) == 1
    assert client.get(f"/jobs/{r.json['id']}").status_code == 200  # in the browser too
    # a member of no organisation cannot revoke it; its owner can
    stranger = app.test_client()
    log_in(stranger, make_account(settings, "max@example.org"))
    assert stranger.post(f"/account/keys/{row.prefix}/revoke",
                         data={"csrf_token": csrf(stranger, "/account")}).status_code == 404
    assert client.post(f"/account/keys/{row.prefix}/revoke",
                       data={"csrf_token": csrf(client, "/account")}).status_code == 303
    assert client.get("/api/v1/jobs", headers=auth(key)).status_code == 401


def test_an_organisation_invites_shares_and_removes(app, settings):
    owner = make_account(settings, "ned@example.org", credits_=5)
    guest = make_account(settings, "ola@example.org", credits_=2)
    boss = app.test_client()
    log_in(boss, owner)
    r = boss.post("/account/members", data={"csrf_token": csrf(boss, "/account"),
                                            "invite-email": guest.email})
    assert r.status_code == 303
    (msg,) = mails(settings, guest.email)
    path = link_in(msg, "/invitations/")
    visitor = app.test_client()
    log_in(visitor, guest)
    assert b"2 credit(s)" in visitor.get(path).data
    assert visitor.post(path, data={"csrf_token": csrf(visitor, path)}).status_code == 303
    url = settings.database_url
    assert organisations.place_of(url, guest.user_id).org.id == owner.org_id
    assert credits.balance(url, owner.org_id) == 7  # the guest's credits came along
    assert credits.ledger_total(url, owner.org_id) == 7
    assert organisations.get_org(url, guest.org_id) is None  # the guest's own one is closed
    # a member cannot invite or remove; the owner can remove the member
    assert visitor.post("/account/members", data={
        "csrf_token": csrf(visitor, "/account"), "invite-email": "x@example.org"}
    ).status_code == 403
    assert visitor.post(f"/account/members/{owner.user_id}/remove",
                        data={"csrf_token": csrf(visitor, "/account")}).status_code == 403
    assert boss.post(f"/account/members/{guest.user_id}/remove",
                     data={"csrf_token": csrf(boss, "/account")}).status_code == 303
    place = organisations.place_of(url, guest.user_id)
    assert place.owner and place.org.id != owner.org_id and place.org.credits == 0
    # the invitation was single-use
    assert visitor.get(path).status_code == 404


def test_an_invitation_is_for_its_address_only(app, settings):
    owner = make_account(settings, "pia@example.org")
    other = make_account(settings, "quin@example.org")
    token = organisations.invite(settings.database_url, owner.org_id, owner.user_id,
                                 "rex@example.org")
    client = app.test_client()
    log_in(client, other)
    assert b"sent to another address" in client.get(f"/invitations/{token}").data
    r = client.post(f"/invitations/{token}", data={"csrf_token": csrf(client, "/account")})
    assert r.status_code == 409
    assert organisations.place_of(settings.database_url, other.user_id).org.id == other.org_id


def test_changing_the_password_keeps_this_session_and_ends_the_others(app, settings):
    person = make_account(settings, "sam@example.org")
    here, there = app.test_client(), app.test_client()
    log_in(here, person)
    log_in(there, person)
    r = here.post("/account/password", data={
        "csrf_token": csrf(here, "/account"), "pw-current": person.password,
        "pw-password": "another good password", "pw-repeat": "another good password"})
    assert r.status_code == 303
    assert here.get("/account").status_code == 200
    assert there.get("/account").status_code == 302
    with session_scope(settings.database_url) as session:
        assert session.get(User, person.user_id).password_hash.startswith("$argon2id$")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_anonymous_job_is_not_claimed_by_a_login_in_another_browser(app, settings, series):
    person = make_account(settings, "tom@example.org")
    anonymous = app.test_client()
    r = anonymous.post("/upload", data={"files": file_parts(series[:4]),
                                        "csrf_token": csrf(anonymous)},
                       content_type="multipart/form-data",
                       headers={"Accept": "application/json"})
    job_id = r.json["job"]
    other = app.test_client()
    log_in(other, person)
    assert other.get(f"/jobs/{job_id}").status_code == 404
    assert jobs.get_job(settings, job_id).owner.startswith("web:")
