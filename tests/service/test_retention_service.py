"""Retention and metrics on the real service: gunicorn (two processes), a worker, two
schedulers running an hour and a minute ahead (libfaketime), a real redis-server and the
database. Conversions of real series; then the results are gone from disk, database and
Redis, downloads answer 410, and the scrapes (checked by ``promtool check metrics``) show
the deletions, with the overdue gauge back at 0."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dicomstl import jobs
from dicomstl.queue import connect
from dicomstl_cli.client import Client
from scheduler.lease import LEASE_KEY
from tests.conftest import require_tool
from tests.service.helpers import free_port, stop, wait_for


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("web", "worker", "scheduler_a", "scheduler_b")}


@pytest.fixture
def service_env(service_env, ports, tmp_path):
    """This test's processes serve metrics; the web app runs two gunicorn processes."""
    return {**service_env, "DICOMSTL_WEB_WORKERS": "2",
            "DICOMSTL_WEB_METRICS_PORT": str(ports["web"]),
            "DICOMSTL_WORKER_METRICS_PORT": str(ports["worker"]),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "web-metrics")}


def scrape(port: int) -> str:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, keyed by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def _form_upload(base: str, files: list[Path], options: dict) -> tuple[requests.Session, str]:
    """Upload as the browser's form does (session cookie, CSRF token); (session, job id)."""
    browser = requests.Session()
    home = browser.get(base + "/", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', home)[1]
    parts = [("files", (f"{n:04d}", path.read_bytes())) for n, path in enumerate(files)]
    r = browser.post(base + "/upload", data={"csrf_token": token, **options}, files=parts,
                     headers={"Accept": "application/json"}, timeout=60)
    assert r.status_code == 201, r.text
    return browser, r.json()["job"]


def _scheduler_an_hour_ahead(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``dicomstl scheduler`` whose clock reads 61 minutes ahead (libfaketime; monotonic time
    is left alone, so its waits stay real)."""
    require_tool("faketime")  # the Debian package, which ships the library
    # preloaded into the scheduler itself (the faketime command would stand between it and
    # our SIGTERM); the MT build, as the scheduler has threads
    library = next(iter(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")), None)
    assert library, "libfaketimeMT.so.1 not found (Debian package faketime)"
    env = {**os.environ, **env, "DICOMSTL_SCHEDULER_METRICS_PORT": str(port),
           "LD_PRELOAD": library, "FAKETIME": "+61m", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "dicomstl_cli", "scheduler"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT)


def promtool_check_metrics(text: str) -> None:
    promtool = require_tool("promtool")
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_results_are_gone_an_hour_after_conversion(shared_dicom, web_url, worker, settings,
                                                   api_key, service_env, ports, tmp_path):
    worker()
    # One job from the form (the browser's session owns it), one from the API.
    browser, form_job = _form_upload(web_url, sorted((shared_dicom / "mr-enhanced-sag")
                                                     .iterdir()), {"keep": "largest"})
    client = Client(web_url, api_key.key)
    api_job = client.submit([shared_dicom / "ct-phantom-tilt-neg"], {"preset": "bone"})["id"]
    done = client.wait(api_job, poll_s=0.3, timeout_s=240)
    assert done["state"] == "done", done["message"]
    form = wait_for(lambda: (s := browser.get(f"{web_url}/jobs/{form_job}/status",
                                              timeout=10).json())["state"] in ("done", "failed")
                    and s, 240, "the form's job")
    assert form["state"] == "done", form["message"]
    ids = (form_job, api_job)
    redis = connect(settings.redis_url)
    for job_id in ids:
        assert (settings.jobs_dir / job_id / "result").is_dir()
        assert redis.exists(f"rq:job:{job_id}_r1")
    assert browser.get(f"{web_url}/jobs/{form_job}/download", timeout=30).status_code == 200

    # Another replica holds the lease (and then stops): both schedulers wait and watch.
    redis.set(LEASE_KEY, "a-replica-that-stopped", px=600_000)
    schedulers = [_scheduler_an_hour_ahead(service_env, ports[name], tmp_path / f"{name}.log")
                  for name in ("scheduler_a", "scheduler_b")]
    try:
        for name in ("scheduler_a", "scheduler_b"):
            wait_for(lambda n=name: _overdue_results(ports[n]) == 2, 60,
                     f"{name} to see two overdue results")
        assert all((settings.jobs_dir / job_id).is_dir() for job_id in ids)  # nobody led
        redis.delete(LEASE_KEY)  # the lease is free: one of the two takes it and sweeps
        wait_for(lambda: not any((settings.jobs_dir / j).exists() for j in ids), 60,
                 "the results to be deleted")
        for name in ("scheduler_a", "scheduler_b"):  # both see it done
            wait_for(lambda n=name: _overdue_results(ports[n]) == 0, 60,
                     f"{name}'s overdue gauge to return to 0")
        texts = {name: scrape(ports[name]) for name in ("scheduler_a", "scheduler_b")}
    finally:
        for proc in schedulers:
            stop(proc)

    # Gone from the database, the disk and Redis.
    for job_id in ids:
        assert jobs.get_job(settings, job_id).state == "deleted"
        assert not (settings.jobs_dir / job_id).exists()
        assert list(redis.scan_iter(match=f"*{job_id}*")) == []
        for registry in redis.scan_iter(match="rq:*"):  # nor a registry naming it
            if redis.type(registry) == b"zset":
                assert not any(job_id.encode() in m for m in redis.zrange(registry, 0, -1))
    assert client.job(api_job)["state"] == "deleted"
    # The downloads answer 410: a page for the browser, JSON for the API.
    page = browser.get(f"{web_url}/jobs/{form_job}/download", timeout=30)
    assert page.status_code == 410 and "text/html" in page.headers["Content-Type"]
    assert "results are kept for one hour after conversion" in page.text
    api = requests.get(f"{web_url}/api/v1/jobs/{api_job}/result", timeout=30,
                       headers={"Authorization": f"Bearer {api_key.key}"})
    assert api.status_code == 410 and "deleted" in api.json()["error"]
    texts["web"], texts["worker"] = scrape(ports["web"]), scrape(ports["worker"])

    # The scrapes: each deletion counted once across the two schedulers, one leader.
    schedulers_text = [texts["scheduler_a"], texts["scheduler_b"]]
    assert sum(value(t, "dicomstl_retention_deletions_total", kind="result")
               for t in schedulers_text) == 2
    assert sum(value(t, "dicomstl_scheduler_leader") for t in schedulers_text) == 1
    assert all(value(t, "dicomstl_retention_overdue_items", kind=kind) == 0
               for t in schedulers_text for kind in ("upload", "result", "ip_log"))
    assert all(value(t, "dicomstl_workers_live") == 1 for t in schedulers_text)
    assert value(texts["worker"], "dicomstl_worker_jobs_total", outcome="done") == 2
    assert value(texts["worker"], "dicomstl_worker_stage_duration_seconds_count",
                 stage="surface", backend="cpu") == 2
    assert value(texts["worker"], "dicomstl_worker_triangles_total", backend="cpu") == (
        done["report"]["mesh"]["triangles"] + form["report"]["mesh"]["triangles"])
    assert value(texts["worker"], "dicomstl_worker_backend_info", backend="cpu") == 1
    web = texts["web"]
    assert value(web, "dicomstl_uploads_total", source="form") == 1
    assert value(web, "dicomstl_uploads_total", source="api") == 1
    assert value(web, "dicomstl_upload_bytes_total", source="api") > 20e6
    assert value(web, "dicomstl_http_responses_total", route="/jobs/<job_id>/download",
                 status_class="4xx") == 1
    assert value(web, "dicomstl_http_request_duration_seconds_count",
                 route="/api/v1/jobs/<job_id>", method="GET") >= 1
    # Every metric the dashboard and the alert rules query is one these processes export.
    exported = {name for text in texts.values() for name, _ in samples(text)}
    for name in sorted(queried_metrics()):
        assert name in exported, f"{name} is queried by deploy/ but no process exports it"
    # No job id, key, IP or series detail in any label value.
    for name, text in texts.items():
        for job_id in ids:
            assert job_id not in text, name
        assert api_key.key not in text and "127.0.0.1" not in text
        assert "Sag" not in text and "1.3.12." not in text
        promtool_check_metrics(text)


def queried_metrics() -> set[str]:
    """The dicomstl metric names in the Grafana dashboard's and the alert rules' queries."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    dashboard = json.loads((deploy / "grafana" / "dicomstl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((deploy / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) > 25
    return {m for e in exprs for m in re.findall(r"\bdicomstl_[a-z_]+\b", e)}


def _overdue_results(port: int) -> float | None:
    try:
        return value(scrape(port), "dicomstl_retention_overdue_items", kind="result")
    except requests.ConnectionError:
        return None  # not serving yet


def test_web_processes_are_added_up(web_url, service_env, ports, tmp_path):
    """Each gunicorn process counts its own requests, and those of processes that have exited
    still count: requests before and after the master replaced both workers (SIGHUP) add up
    in one scrape."""
    n = 40
    before = scrape(ports["web"])  # the fixture's readiness checks are in it already
    log = tmp_path / "web.log"

    def get(_):
        return requests.get(web_url + "/healthz", timeout=30,
                            headers={"Connection": "close"}).status_code

    def replaced() -> bool:  # two new workers booted, and both old ones exited
        text = log.read_text()
        return text.count("Booting worker with pid") >= 4 and text.count("Worker exiting") >= 2

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(get, range(n))) == [200] * n
        master = int(re.search(r"Listening at: \S+ \((\d+)\)", log.read_text())[1])
        os.kill(master, signal.SIGHUP)  # two new workers; the old ones finish and exit
        wait_for(replaced, 60, "gunicorn to replace its workers")
        assert list(pool.map(get, range(n))) == [200] * n
    text = scrape(ports["web"])
    for name, labels in (("dicomstl_http_responses_total", {"status_class": "2xx"}),
                         ("dicomstl_http_request_duration_seconds_count", {"method": "GET"})):
        count = value(text, name, route="/healthz", **labels)
        assert count - value(before, name, route="/healthz", **labels) == 2 * n
    folder = Path(service_env["PROMETHEUS_MULTIPROC_DIR"])
    pids = {int(re.search(r"_(\d+)\.db$", p.name)[1]) for p in folder.glob("*.db")}
    assert len(pids) >= 2, "old and new gunicorn processes wrote metrics"
    promtool_check_metrics(text)


def test_alert_rules_and_scrape_config_pass_promtool():
    promtool = require_tool("promtool")
    folder = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run([promtool, *args], cwd=folder, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
