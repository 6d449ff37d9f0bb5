"""What the API refuses, and how what it keeps is stored: options out of range or not finite
(the same ranges in the form, the CLI and the OpenAPI document), an Idempotency-Key reused
for another request, and owner-only files and folders. In-process app on a real Redis and a
real database (SQLite, and PostgreSQL when it answers)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dicomstl.options import LIMITS
from dicomstl_cli.main import main as cli_main
from tests.service.helpers import api_submit, auth, file_parts


@pytest.mark.parametrize(("raw", "text"), [
    ('{"smooth_mm": 1e308}', "smooth_mm (--smooth-mm) must be from 0 to 5 (mm)"),
    ('{"smooth_mm": 2000}', "must be from 0 to 5 (mm), not 2,000"),
    ('{"level": Infinity}', "'level' must be a finite number"),
    ('{"level": -Infinity}', "'level' must be a finite number"),
    ('{"level": 1e400}', "'level' must be a finite number"),
    ('{"level": NaN}', "'level' must be a finite number"),
    ('{"level": 1e10}', "level (--level) must be from -1,000,000,000 to 1,000,000,000"),
    ('{"min_part_mm3": 1e12}', "min_part_mm3 (--min-part-mm3) must be from 0 to"),
    ('{"mesh_smooth": 100000}', "mesh_smooth (--mesh-smooth) must be from 0 to 100"),
    ('{"downsample": 64}', "downsample (--downsample) must be from 1 to 16"),
    ('{"time_point": 99999}', "time_point (--time-point) must be from 0 to 10,000"),
    ('{"max_triangles": 2000000000}', "max_triangles (--max-triangles) must be from 100"),
    ('{"keep": "100000"}', "a number of parts from 1 to 10,000"),
])
def test_numeric_options_outside_their_range_are_refused(app, settings, api_key, series, raw,
                                                         text):
    r = api_submit(app.test_client(), api_key, series, raw)
    assert r.status_code == 400 and text in r.json["error"], r.json
    assert list(settings.jobs_dir.iterdir()) == [] and list(settings.incoming_dir.iterdir()) == []


def test_the_ends_of_each_range_are_accepted(app, api_key, series):
    client = app.test_client()
    for name, (low, high, _unit) in LIMITS.items():
        if name in ("gpu_memory_budget", "decimate"):  # not an API option; below its top
            continue
        needs = {"hollow_mm": 1} if name == "drain_holes" else {}  # holes drain a hollow
        for value in (low, high):
            value = int(value) if float(value).is_integer() else value
            r = api_submit(client, api_key, series[:2], {name: value, **needs})
            assert r.status_code == 201, (name, value, r.json)


def test_form_and_cli_refuse_the_same_ranges(app, series, tmp_path, capsys):
    browser = app.test_client()
    token = browser.get("/").data.split(b'name="csrf_token" value="')[1].split(b'"')[0]
    page = browser.post("/upload", data={"files": file_parts(series), "csrf_token": token.decode(),
                                         "smooth_mm": "2000"},
                        content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert page.status_code == 400 and "from 0 to 5 (mm)" in page.json["error"]
    code = cli_main(["convert", str(series[0].parent), "-o", str(tmp_path / "m.stl"), "--quiet",
                     "--smooth-mm", "inf"])
    assert code == 2 and "must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "m.stl").exists()


def test_the_openapi_document_states_the_ranges(app):
    options = app.test_client().get("/api/v1/openapi.json").json[
        "components"]["schemas"]["Options"]["properties"]
    assert (options["smooth_mm"]["minimum"], options["smooth_mm"]["maximum"]) == (0, 5)
    assert options["decimate"]["exclusiveMaximum"] == 1 and "maximum" not in options["decimate"]
    for name, (low, _high, _unit) in LIMITS.items():
        if name in options:
            assert options[name]["minimum"] == low, name


def test_an_idempotency_key_reused_for_another_request_is_422(app, settings, api_key, series):
    client = app.test_client()
    key = {"Idempotency-Key": "visit-42"}
    first = api_submit(client, api_key, series, {"preset": "bone"}, headers=key)
    assert first.status_code == 201
    same = api_submit(client, api_key, series, {"preset": "bone"}, headers=key)
    assert same.status_code == 200 and same.json["id"] == first.json["id"]
    for other in ({"options": {"preset": "skin"}},  # other options
                  {"series": series[:-1], "options": {"preset": "bone"}},  # other files
                  {"options": {"preset": "bone"},
                   "callback_url": "https://93.184.215.14/hook"}):  # another callback
        r = api_submit(client, api_key, other.pop("series", series), other.pop("options"),
                       headers=key, **other)
        assert r.status_code == 422, r.json
        assert "already used for a different request" in r.json["error"]
    assert [p.name for p in settings.jobs_dir.iterdir()] == [first.json["id"]]
    assert list(settings.incoming_dir.iterdir()) == []  # the refused uploads are gone


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_folder_database_and_uploads_are_owner_only(app, settings, api_key, series):
    """Other local users can read none of it: the database holds webhook secrets (the
    secret key file is checked with the settings)."""
    job_id = api_submit(app.test_client(), api_key, series).json["id"]
    assert _mode(settings.data_dir) == 0o700
    if settings.database_url.startswith("sqlite"):
        database = Path(make_url(settings.database_url).database)
        for path in (database, database.with_name(database.name + "-wal")):
            assert _mode(path) == 0o600, path
    job = settings.jobs_dir / job_id
    assert _mode(job) == 0o700 and _mode(job / "upload") == 0o700
    assert {_mode(p) for p in (job / "upload").iterdir()} == {0o600}
    # The API still works for its owner.
    assert app.test_client().get(f"/api/v1/jobs/{job_id}", headers=auth(api_key)).status_code == 200


def test_the_api_documentation_page_shows_every_operation_and_range(app):
    client = app.test_client()
    home = client.get("/").data.decode()
    assert 'href="/api"' in home  # linked from the home page
    page = client.get("/api").data.decode()
    document = client.get("/api/v1/openapi.json").json
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in ("parameters", "servers"):
                assert f'id="{operation["operationId"]}"' in page, operation["operationId"]
    assert "<code>GET /readyz</code>" in page and "<code>GET /api/v1/jobs</code>" in page
    assert "<code>smooth_mm</code>" in page and "0 to 5" in page and "0 to 1 (not included)" in page
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
