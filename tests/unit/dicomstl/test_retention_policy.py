"""The retention promise: deadlines from the settings, and the sentences made from them."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from dicomstl import retention_policy as policy
from dicomstl.settings import load_settings


def test_deadlines_follow_the_settings(tmp_path):
    s = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path)})
    t = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    assert policy.upload_deadline(s, t) == t + dt.timedelta(hours=1)
    assert policy.result_deadline(s, t) == t + dt.timedelta(hours=1)
    # the longest a run may take, then the time a lost worker takes to be noticed
    assert policy.run_deadline(s, t) == t + dt.timedelta(seconds=1800 + 60)
    short = replace(s, result_ttl_s=900)
    assert policy.result_deadline(short, t) == t + dt.timedelta(minutes=15)


def test_what_users_read_says_the_configured_times(tmp_path):
    s = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path)})
    assert policy.deleted_result_message(s) == (
        "the model was deleted (results are kept for one hour after conversion)")
    assert "models one hour later" in policy.summary(s)
    assert "deleted unconverted, one hour after it arrived" in policy.unconverted_message(s)
    assert "90 minutes" in policy.summary(replace(s, result_ttl_s=5400))
    assert [policy.duration_words(n) for n in (1, 45, 60, 7200, 86400, 172800, 90.5)] == [
        "one second", "45 seconds", "one minute", "2 hours", "one day", "2 days",
        "90.5 seconds"]


def test_row_rules_are_the_promised_windows():
    windows = {rule.kind: rule.window for rule in policy.ROW_RULES}
    assert windows == {
        "ip_log": dt.timedelta(days=30), "job_record": dt.timedelta(days=30),
        "inquiry": dt.timedelta(days=365), "invitation": dt.timedelta(0),
        "stripe_event": dt.timedelta(days=30), "payment_record": dt.timedelta(days=3650)}
    assert policy.duration_words(dt.timedelta(days=3650).total_seconds()) == "10 years"


def test_promises_say_every_window_the_scheduler_enforces(tmp_path):
    """The privacy page's list: every row rule, and the file windows from the settings, in
    words, so the page and the scheduler cannot disagree."""
    s = replace(load_settings({"DICOMSTL_DATA_DIR": str(tmp_path)}), result_ttl_s=5400,
                mail_keep_s=3 * 86400)
    said = {p["what"]: p["kept"] for p in policy.promises(s)}
    for rule in policy.ROW_RULES:
        assert rule.what in said
        if rule.window:
            assert said[rule.what].startswith(policy.duration_words(
                rule.window.total_seconds()))
    kept = " ".join(said.values())
    assert "90 minutes after the conversion" in kept and "3 days" in kept
    assert "one year after they arrived" in said["messages sent with the contact form"]
