"""The threshold preview over HTTP with a real worker (gunicorn, redis-server, database):
409 while it is made, 404 for jobs without one, JSON and PNGs that are never cached,
converting at the chosen level, and the preview deleted with the upload."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
import requests

from dicomstl import storage
from dicomstl.db import utcnow
from scheduler import retention
from tests.service.helpers import auth, wait_for

PLANES = ("axial", "coronal", "sagittal")


def _submit(web_url, key, series, options) -> dict:
    files = [("files", ("part", p.read_bytes())) for p in series]
    r = requests.post(web_url + "/api/v1/jobs", headers=auth(key), files=files,
                      data={"options": json.dumps(options)}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def _job(web_url, key, job_id) -> dict:
    return requests.get(f"{web_url}/api/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()


def _ended(web_url, key, job_id, states=("uploaded", "done", "failed")):
    return wait_for(lambda: (j := _job(web_url, key, job_id))["state"] in states and j,
                    timeout_s=180, what=f"job in {states}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_preview_then_convert_at_a_level(web_url, worker, settings, api_key, series):
    from PIL import Image

    key = api_key.key
    plain = _submit(web_url, key, series, {"level": 0})
    job = _submit(web_url, key, series, {"preview": True, "preset": "bone"})
    url = f"{web_url}/api/v1/jobs/{job['id']}/preview"
    # before the worker runs: not ready (409), and a job without the option has none (404)
    early = requests.get(url, headers=auth(key), timeout=10)
    assert early.status_code == 409 and "not ready" in early.json()["error"]
    assert early.headers["Cache-Control"] == "no-store"
    none = requests.get(f"{web_url}/api/v1/jobs/{plain['id']}/preview", headers=auth(key),
                        timeout=10)
    assert none.status_code == 404 and "no preview" in none.json()["error"]
    assert none.headers["Cache-Control"] == "no-store"
    assert requests.get(url, timeout=10).status_code == 401  # a key is needed
    level = requests.post(f"{web_url}/api/v1/jobs/{job['id']}/level", json={"level": 10},
                          headers=auth(key), timeout=10)
    assert level.status_code == 409  # no level before the preview

    worker()
    job = _ended(web_url, key, job["id"])
    assert job["state"] == "uploaded" and job["message"].startswith("the threshold preview")
    assert job["links"]["preview"].endswith("/preview")
    r = requests.get(url, headers=auth(key), timeout=10)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["units"] == "HU" and sum(body["histogram"]["counts"]) == 12 * 24 * 24
    assert {p["name"]: p["level"] for p in body["levels"]}["bone"] == 300
    assert [s["plane"] for s in body["slices"]] == list(PLANES)
    for s in body["slices"]:
        png = requests.get(web_url + s["url"], headers=auth(key), timeout=10)
        assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
        assert png.headers["Cache-Control"] == "no-store"
        assert Image.open(io.BytesIO(png.content)).size == (s["width"], s["height"])
    assert requests.get(f"{url}/oblique.png", headers=auth(key), timeout=10).status_code == 404
    folder = storage.preview_dir(settings, job["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["axial.png", "coronal.png",
                                                        "preview.json", "sagittal.png"]
    # out of range, then a good level: converted at it
    bad = requests.post(f"{web_url}/api/v1/jobs/{job['id']}/level", json={"level": 1e12},
                        headers=auth(key), timeout=10)
    assert bad.status_code == 400
    queued = requests.post(f"{web_url}/api/v1/jobs/{job['id']}/level", json={"level": 150},
                           headers=auth(key), timeout=10)
    assert queued.status_code == 200, queued.text
    assert queued.json()["options"]["level"] == 150 and "preset" not in queued.json()["options"]
    done = _ended(web_url, key, job["id"], ("done", "failed"))
    assert done["state"] == "done", done["message"]
    assert done["report"]["level"] == 150 and done["report"]["level_source"] == "level"
    # the preview went with the upload, and the routes say so
    assert not folder.exists() and not storage.upload_dir(settings, job["id"]).exists()
    gone = requests.get(url, headers=auth(key), timeout=10)
    assert gone.status_code == 404 and gone.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_preview_deleted_with_the_upload_at_its_deadline(web_url, worker, settings, api_key,
                                                         series):
    key = api_key.key
    job = _submit(web_url, key, series, {"preview": True})
    worker()
    job = _ended(web_url, key, job["id"])
    assert job["state"] == "uploaded"
    folder = storage.preview_dir(settings, job["id"])
    assert (folder / "preview.json").is_file()
    # not due yet: kept; past the upload's deadline (injected clock): the whole job goes
    retention.sweep(settings, utcnow())
    assert (folder / "axial.png").is_file()
    due = dt.datetime.fromisoformat(job["delete_after"].replace("Z", "+00:00"))
    counts = retention.sweep(settings, due + dt.timedelta(seconds=1))
    assert counts["upload"] == 1
    assert not storage.job_dir(settings, job["id"]).exists()
    r = requests.get(f"{web_url}/api/v1/jobs/{job['id']}/preview", headers=auth(key),
                     timeout=10)
    assert r.status_code == 404
