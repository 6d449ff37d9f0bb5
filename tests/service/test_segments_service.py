"""Several segments in one job through the service: the API's options and the form's rows,
converted by a worker, the result (a zip of one STL per segment, or a 3MF) and the job page's
table of segments."""

from __future__ import annotations

import io
import zipfile

import pytest
from rq import Queue, SimpleWorker

from dicomstl import jobs
from dicomstl.queue import connect
from tests.service.helpers import api_submit, auth, file_parts

SEGMENTS = [{"name": "sphere", "preset": "skin"},
            {"name": "rim", "level": -500, "level2": 500, "color": "#00ff00"}]


def _work(settings, queue: str) -> None:
    conn = connect(settings.redis_url)
    SimpleWorker([Queue(queue, connection=conn)], connection=conn).work(burst=True)


def test_api_segments_give_a_zip_of_one_stl_each_and_their_reports(app, settings, api_key,
                                                                   series):
    client = app.test_client()
    r = api_submit(client, api_key, series, {"segments": SEGMENTS})
    assert r.status_code == 201, r.json
    job_id = r.json["id"]
    _work(settings, "bulk")
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(api_key)).json
    assert job["state"] == "done", job
    assert job["options"]["segments"] == SEGMENTS
    report = job["report"]
    assert [s["name"] for s in report["segments"]] == ["sphere", "rim"]
    assert report["segments"][1]["color"] == "#00ff00"
    assert report["output"].endswith(".zip")
    result = client.get(f"/api/v1/jobs/{job_id}/result", headers=auth(api_key))
    assert result.status_code == 200 and result.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(result.data)) as z:
        assert z.namelist() == ["sphere.stl", "rim.stl"]


@pytest.mark.parametrize("segments, text", [
    ([{"name": "a"}], "either a preset or a level"),
    ([{"name": "a", "preset": "bone"}, {"name": "A", "level": 3}], "two segments are named"),
    ("bone=bone", "list of segments"),
])
def test_bad_segments_are_refused(app, api_key, series, segments, text):
    r = api_submit(app.test_client(), api_key, series, {"segments": segments})
    assert r.status_code == 400 and text in r.json["error"]


def test_form_rows_make_segments_and_the_job_page_lists_them(app, settings, series):
    browser = app.test_client()
    home = browser.get("/").data
    assert b'id="add-segment"' in home and b'name="segment_spec"' in home
    token = home.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    r = browser.post("/upload", data={
        "files": file_parts(series), "csrf_token": token, "format": "3mf",
        "segment_name": ["sphere", "", "rim"], "segment_spec": ["skin", "", "-500:500"],
        "segment_color": ["#e8dcc0", "#000000", "#00ff00"]},
        content_type="multipart/form-data")
    assert r.status_code == 303
    job_url = r.headers["Location"]
    status = browser.get(job_url + "/status").json
    assert status["options"] == {"format": "3mf", "segments": [
        {"name": "sphere", "preset": "skin", "color": "#e8dcc0"},
        {"name": "rim", "level": -500.0, "level2": 500.0, "color": "#00ff00"}]}
    _work(settings, "interactive")
    job_id = job_url.rsplit("/", 1)[1]
    assert jobs.get_job(settings, job_id).state == "done"
    page = browser.get(job_url).data.decode()
    assert 'id="segments"' in page and "rim" in page and "#00ff00" in page
    if app.config["PREVIEW_AVAILABLE"]:  # the preview draws each segment in its colour
        assert """data-segments='[["sphere", "#e8dcc0"], ["rim", "#00ff00"]]'""" in page
        assert 'data-model-format="3mf"' in page and 'id="segment-toggles"' in page
    model = browser.get(job_url + "/download")
    assert model.mimetype == "model/3mf"
    with zipfile.ZipFile(io.BytesIO(model.data)) as z:
        text = z.read("3D/3dmodel.model").decode()
    assert text.count("<object ") == 2 and 'name="rim"' in text
    bad = browser.post("/upload", data={
        "files": file_parts(series), "csrf_token": token, "segment_name": ["x"],
        "segment_spec": ["femur"], "segment_color": ["#000000"]},
        content_type="multipart/form-data")
    assert bad.status_code == 400
