"""The pinned dependencies (deploy/requirements.lock, deploy/requirements-gpu.lock) carry no
known vulnerability, checked by pip-audit itself, and a known-vulnerable pin fails the audit.

Where it runs (here and CI) PyPI's JSON API answers 404 and osv.dev does not answer, so
pip-audit cannot reach its usual advisory services. The audit therefore runs pip-audit's OSV
client (``--vulnerability-service osv --osv-url``) against a loopback server that answers
OSV queries from the only advisory database installable from the reachable package index:
``safety-db`` (PyUp's free database, last published in July 2021). What that covers: every
advisory PyUp published up to its date. What it does not: anything later (a pin vulnerable
through an advisory from after July 2021 passes this test), and the npm side
(web/package-lock.json: ``npm audit``'s endpoint answers 405 through the reachable registry).
``test_live_audit`` runs pip-audit against PyPI's own service whenever that answers, and
says plainly (a skip with the reason) when it does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "deploy" / "requirements.lock", ROOT / "deploy" / "requirements-gpu.lock"]
PIP_AUDIT = [sys.executable, "-m", "pip_audit"]


def advisories() -> dict[str, list[dict]]:
    """safety-db's advisories by canonical package name (its ``insecure_full.json``)."""
    import importlib.util

    spec = importlib.util.find_spec("safety_db")  # its __init__ cannot be imported
    assert spec is not None and spec.submodule_search_locations, "safety-db is not installed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    data = json.loads((folder / "insecure_full.json").read_text())
    data.pop("$meta", None)
    return {canonicalize_name(name): entries for name, entries in data.items()}


def osv_answer(db: dict[str, list[dict]], name: str, version: str) -> dict:
    """The OSV ``/v1/query`` answer for one package version: the advisories whose version
    specifiers contain it, with the fixed versions their ``<X`` bounds name."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        return {}
    vulns = []
    for entry in db.get(canonicalize_name(name), []):
        specs = []
        for text in entry.get("specs", []):
            try:
                specs.append(SpecifierSet(text))
            except InvalidSpecifier:
                continue
        if not any(wanted in s for s in specs):
            continue
        fixed = [c.removeprefix("<") for t in entry.get("specs", [])
                 for c in t.split(",") if c.startswith("<") and not c.startswith("<=")]
        vulns.append({
            "id": entry["id"], "aliases": [entry["cve"]] if entry.get("cve") else [],
            "details": entry.get("advisory", ""),
            "affected": [{"package": {"name": canonicalize_name(name), "ecosystem": "PyPI"},
                          "ranges": [{"type": "ECOSYSTEM",
                                      "events": [{"introduced": "0"},
                                                 *({"fixed": f} for f in fixed)]}]}]})
    return {"vulns": vulns} if vulns else {}


@pytest.fixture(scope="module")
def osv_url() -> Iterator[str]:
    """A loopback server answering OSV's query API from safety-db; its query URL."""
    db = advisories()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps(osv_answer(db, query["package"]["name"],
                                         query["version"])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()
    server.server_close()


def audit(requirements: Path, service: list[str], tmp_path: Path) -> tuple[int, dict, str]:
    """pip-audit over a hashed, fully pinned requirements file (no resolution, no
    installs); its exit status, its JSON report and its error output."""
    report = tmp_path / f"{requirements.name}.json"
    proc = subprocess.run(
        [*PIP_AUDIT, "-r", str(requirements), "--no-deps", "--disable-pip", "--format", "json",
         "--output", str(report), "--progress-spinner", "off", "--timeout", "10", *service],
        capture_output=True, text=True, timeout=120)
    data = json.loads(report.read_text()) if report.exists() and report.stat().st_size else {}
    return proc.returncode, data, proc.stderr


def test_the_advisory_database_is_there_and_answers_for_a_known_case():
    """The offline database is present, not empty, and knows jinja2 2.10's CVE-2020-28493
    (ReDoS, fixed in 2.11.3): an audit against an empty database cannot pass."""
    db = advisories()
    assert len(db) > 1000
    found = osv_answer(db, "Jinja2", "2.10")["vulns"]
    assert any("CVE-2020-28493" in v["aliases"] for v in found)
    assert osv_answer(db, "jinja2", "3.1.6") == {}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_pinned_dependencies_have_no_known_vulnerability(lock, osv_url, tmp_path):
    status, report, err = audit(lock, ["-s", "osv", "--osv-url", osv_url], tmp_path)
    deps = report.get("dependencies", [])
    # every pin was audited (none skipped for want of a version), and none is vulnerable
    assert len(deps) > 50, err
    assert [d for d in deps if d.get("skip_reason")] == []
    vulnerable = [(d["name"], d["version"], [v["id"] for v in d["vulns"]])
                  for d in deps if d.get("vulns")]
    assert vulnerable == [] and status == 0, (vulnerable, err)


def test_a_known_vulnerable_pin_fails_the_audit(osv_url, tmp_path):
    """deploy/requirements.lock with jinja2 pinned back to 2.10: pip-audit exits non-zero and
    names the CVE and its fix."""
    text = LOCKS[0].read_text()
    pinned = [line for line in text.splitlines() if line.lower().startswith("jinja2==")]
    assert pinned, "jinja2 is no longer pinned in requirements.lock: pick another package"
    bad = tmp_path / "requirements.lock"
    bad.write_text(text.replace(pinned[0], "jinja2==2.10 \\"))
    status, report, err = audit(bad, ["-s", "osv", "--osv-url", osv_url], tmp_path)
    assert status == 1, err
    (jinja,) = [d for d in report["dependencies"] if d["name"].lower() == "jinja2"]
    assert jinja["version"] == "2.10"
    assert any("CVE-2020-28493" in [v["id"], *v["aliases"]] and "2.11.3" in v["fix_versions"]
               for v in jinja["vulns"])


def test_live_audit(tmp_path):
    """pip-audit against PyPI's own advisory service, wherever it answers."""
    try:
        live = requests.get("https://pypi.org/pypi/jinja2/2.10/json", timeout=5).ok
    except requests.RequestException:
        live = False
    if not live:
        pytest.skip("PyPI's JSON API does not answer from this machine: only the offline "
                    "audit (safety-db, July 2021) ran")
    for lock in LOCKS:
        status, report, err = audit(lock, ["-s", "pypi"], tmp_path)
        assert status == 0 and len(report.get("dependencies", [])) > 50, err
