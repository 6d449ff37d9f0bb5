"""No patient data anywhere: real series whose PatientName, PatientID, PatientBirthDate,
AccessionNumber, InstitutionName and ReferringPhysicianName hold this run's marker values go
through the whole service (gunicorn web app, worker, scheduler, redis-server, SQLite and
PostgreSQL): the form with a threshold preview and a 3MF, the API with a re-zipped JPEG 2000
series, an enhanced multi-frame upload holding two studies (the series choice), and two
unusable series (their error path). Afterwards none of the markers, in any case or DICOM
encoding, is in any process's log, any /metrics output, any table of the database, any Redis
key or value (RQ payloads decoded), any file name or byte of the data folder (before and after
the conversions), the STL, ASCII STL and 3MF models, the reports, or any HTTP response body
the flow received; and the same search does find them in the uploaded input.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid
from sqlalchemy import inspect, text

from dicomstl.db import engine_for
from dicomstl.queue import connect
from tests.robustness.phi import (
    PHI_KEYWORDS,
    Markers,
    expanded,
    files_and_names,
    invalid,
    make_markers,
    search_all,
    write_marked,
)
from tests.service.helpers import auth, free_port, spawn, stop, wait_for

_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
ENDED = ("done", "failed")
METRICS = ("web", "worker", "scheduler")


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    """The service's environment with a metrics port for each process."""
    return {**service_env, **{f"DICOMSTL_{name.upper()}_METRICS_PORT": str(free_port())
                              for name in METRICS}}


@pytest.fixture
def processes(service_env: dict[str, str], settings, tmp_path: Path) -> Iterator[None]:
    """A real worker and scheduler, both logging at DEBUG level (the most they ever log)."""
    procs: list[subprocess.Popen] = [spawn(["--debug", name], service_env,
                                           tmp_path / f"{name}.log")
                                     for name in ("worker", "scheduler")]
    yield
    for proc in procs:  # both stop at once
        proc.terminate()
    for proc in procs:
        stop(proc)


class Recorder:
    """A requests session that keeps every response body it receives."""

    def __init__(self, base: str):
        self.base, self.session, self.bodies = base, requests.Session(), []
        self.session.hooks["response"].append(self._keep)

    def _keep(self, response: requests.Response, *args, **kwargs) -> None:
        self.bodies.append((f"HTTP {response.request.method} {response.url}",
                            response.content))

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.base + path, timeout=60, **kw)

    def job(self, path: str, wanted: tuple[str, ...], what: str) -> dict:
        """Poll a job's JSON until its state is one of ``wanted`` (at most 90 s)."""
        def ended():
            view = self.get(path).json()
            return view if view["state"] in wanted else None
        return wait_for(ended, 90, what)


def _marked_inputs(shared: Path, folder: Path, markers: Markers) -> dict[str, list[Path]]:
    """The uploads, each a copy of real shared files carrying the markers."""
    def mark(src: Path, name: str, **kw) -> Path:
        return write_marked(src, folder / name, markers, **kw)

    knee = folder / "knee"
    with zipfile.ZipFile(shared / "zip-mr-knee-t1" / "knee-t1.zip") as original:
        for entry in original.infolist():
            if not entry.is_dir():
                source = folder / "knee-original" / Path(entry.filename).name
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_bytes(original.read(entry))
                # the folder named after the patient, as some exports do
                write_marked(source, knee / f"PHIMARK-NAME-{markers.token}" / entry.filename,
                             markers)
    archive = folder / "knee.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(knee.rglob("*.dcm")):
            z.write(path, str(path.relative_to(knee)))
    sag = shared / "mr-enhanced-sag" / "0063.dcm"
    return {
        "ct": [mark(shared / "ct-enhanced-2frame" / "eCT_Supplemental.dcm", "ct/1.dcm")],
        "knee": [archive],
        "studies": [mark(sag, f"studies/{n}.dcm", study_uid=generate_uid()) for n in (1, 2)],
        "no-geometry": [write_marked(shared / "mr-enhanced-small-rle" / "emri_small_RLE.dcm",
                                     folder / "broken" / "rle.dcm", invalid(markers))],
        "cut-j2k": [mark(shared / "broken" / "j2k-pixeldata-cut.dcm", "broken/cut.dcm")],
    }


def _parts(paths: list[Path], name: str = "part") -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart files; ``name`` is the file name sent (the form's script sends "part")."""
    return [("files", (f"{name}-{n}{p.suffix}", p.read_bytes())) for n, p in enumerate(paths)]


def _redis_dump(url: str) -> list[tuple[str, bytes]]:
    """Every key and value of every type, each value also decoded (zlib, pickle: RQ's job
    payloads), labelled "decoded"."""
    conn = connect(url)
    found = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [conn.get(key) or b""]
        elif kind == "hash":
            values = [x for pair in conn.hgetall(key).items() for x in pair]
        elif kind == "list":
            values = conn.lrange(key, 0, -1)
        elif kind == "set":
            values = list(conn.smembers(key))
        elif kind == "zset":
            values = conn.zrange(key, 0, -1)
        elif kind == "stream":
            values = [x for _id, entry in conn.xrange(key) for pair in entry.items()
                      for x in pair]
        found.append((f"redis key {key!r}", key))
        for value in values:
            plain, *decoded = expanded(value)
            found += [(f"redis {kind} {key!r}", plain),
                      *[(f"redis {kind} {key!r} decoded", v) for v in decoded]]
    return found


def _database_dump(url: str) -> list[tuple[str, bytes | str]]:
    """Every value of every column of every table."""
    engine = engine_for(url)
    found: list[tuple[str, bytes | str]] = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                for column, value in row.items():
                    if isinstance(value, (bytes, memoryview)):
                        found += [(f"db {table}.{column}", v) for v in expanded(bytes(value))]
                    elif value is not None:
                        found.append((f"db {table}.{column}", str(value)))
    return found


def _members(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The file and, for a zip (a 3MF), each member's name and bytes."""
    found = [(name, data)]
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            found += [(f"{name}!{m}", m.encode() + b"\n" + z.read(m)) for m in z.namelist()]
    return found


def test_no_marker_leaves_the_upload(shared_dicom, settings, processes, web_url, api_key,
                                     service_env, tmp_path):
    markers = make_markers()
    inputs = tmp_path / "inputs"  # outside the service's data folder
    uploads = _marked_inputs(shared_dicom, inputs, markers)
    # the guard: the search finds every marker in what is uploaded
    in_input = search_all(markers, files_and_names(inputs))
    for keyword in PHI_KEYWORDS:
        assert any(f": {keyword}=" in hit for hit in in_input), keyword
    api, browser = Recorder(web_url + "/api/v1"), Recorder(web_url)
    api.session.headers.update(auth(api_key))

    # the form: an enhanced CT with a threshold preview first, then a 3MF
    token = _CSRF.search(browser.get("/").text).group(1)
    r = browser.post("/upload", files=_parts(uploads["ct"]), headers={"Accept": "application/json"},
                     data={"csrf_token": token, "preview": "1", "format": "3mf",
                           "crop": "192:320,192:320,0:", "max_triangles": "5000"})
    assert r.status_code == 201, r.text
    form_job = r.json()["job"]
    # the API: a re-zipped JPEG 2000 series, two studies in one upload, two unusable series
    submitted = {}
    for name, options in (("knee", {"level": 90, "downsample": 4}),
                          ("studies", {"downsample": 2, "format": "stl-ascii"}),
                          ("no-geometry", {}), ("cut-j2k", {})):
        # a clinic's own client may send the patient's name as the file name
        r = api.post("/jobs", files=_parts(uploads[name], f"PHIMARK-NAME-{markers.token}"),
                     data={"options": json.dumps(options)})
        assert r.status_code in (200, 201, 202), r.text
        submitted[name] = r.json()["id"]

    status = f"/jobs/{form_job}/status"
    assert browser.job(status, ("uploaded", *ENDED), "the preview")["state"] == "uploaded"
    preview = browser.get(f"/jobs/{form_job}/preview")
    assert preview.status_code == 200, preview.text
    slices = [item["url"] for item in preview.json()["slices"]]
    assert slices and all(browser.get(u).status_code == 200 for u in slices)
    # the data folder while the preview waits: its files, without the upload itself
    leaks = search_all(markers, files_and_names(settings.data_dir,
                                                skip=settings.jobs_dir.glob("*/upload")))
    assert any((settings.jobs_dir / form_job / "preview").iterdir())  # searched just now
    page = browser.get(f"/jobs/{form_job}")
    token = _CSRF.search(page.text).group(1)
    assert browser.post(f"/jobs/{form_job}/level",
                        data={"csrf_token": token, "level": "40"}).status_code == 200

    choice = api.job(f"/jobs/{submitted['studies']}", ("uploaded", *ENDED), "the choice")
    assert choice["state"] == "uploaded" and len(choice["choices"]) == 2, choice
    assert choice["message"].startswith("the upload holds several")  # searched below
    r = api.post(f"/jobs/{submitted['studies']}/series",
                 json={"series": choice["choices"][0]["uid"]})
    assert r.status_code == 200, r.text

    ended = {name: api.job(f"/jobs/{job_id}", ENDED, name) for name, job_id in submitted.items()}
    ended["form"] = browser.job(status, ENDED, "the form's job")
    for name in ("knee", "studies", "form"):
        assert ended[name]["state"] == "done", (name, ended[name]["message"])
        assert ended[name]["report"]["mesh"]["triangles"] > 0
    for name in ("no-geometry", "cut-j2k"):
        message = ended[name]["message"]
        assert ended[name]["state"] == "failed" and message and "Traceback" not in message

    models = [(f"model {name}", api.get(f"/jobs/{submitted[name]}/result").content)
              for name in ("knee", "studies")]
    models.append(("model form", browser.get(f"/jobs/{form_job}/download").content))
    for (_, data), name in zip(models, ("knee", "studies", "form"), strict=True):
        assert len(data) == ended[name]["result_bytes"], name
    assert models[1][1].startswith(b"solid") and models[2][1][:2] == b"PK"  # ASCII STL, 3MF
    browser.get(f"/jobs/{form_job}")  # the job page with its report
    metrics = []
    for name in METRICS:
        port = service_env[f"DICOMSTL_{name.upper()}_METRICS_PORT"]
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "dicomstl_" in body, name
        metrics.append((f"{name} /metrics", body))

    logs = list(tmp_path.glob("*.log"))
    assert {p.name for p in logs} >= {"web.log", "worker.log", "scheduler.log"}
    assert all(p.stat().st_size for p in logs)
    everything = [
        *[item for name, data in models for item in _members(name, data)],
        *[(f"report {name}", json.dumps(job)) for name, job in ended.items()],
        *metrics, *api.bodies, *browser.bodies,
        *_redis_dump(settings.redis_url), *_database_dump(settings.database_url),
        # every log, the data folder after the conversions, the SQLite file and Redis's
        *files_and_names(tmp_path, skip=[inputs]),
    ]
    # the search sees every place: the job ids are in the decoded RQ payloads, the tables,
    # the data folder's names
    knee = submitted["knee"].encode()
    for place in ("decoded", "db jobs.id", "name "):
        assert any(place in where and knee in (data if isinstance(data, bytes) else
                                               data.encode()) for where, data in everything), place
    leaks += search_all(markers, everything)
    assert not leaks, "\n".join(leaks[:40])


def test_the_search_finds_each_marker_in_each_encoding():
    """The search the flow relies on is not blind: each marker is found upper- or lower-case,
    as PN components, as a date with dashes, inside a zlib-compressed pickle (an RQ payload)
    and inside a 3MF member; a text without markers gives no hit."""
    import pickle
    import zlib

    from tests.robustness.phi import hits

    markers = make_markers(seed=7)
    assert markers == make_markers(seed=7) and markers.token != make_markers(seed=8).token
    v = markers.values
    family, given = v["PatientName"].split("^")
    birth = v["PatientBirthDate"]
    texts = {
        "PatientName": f"{given} {family}".upper(),
        "PatientID": v["PatientID"].lower(),
        "PatientBirthDate": f"born {birth[:4]}-{birth[4:6]}-{birth[6:]}",
        "InstitutionName": v["InstitutionName"],
        "ReferringPhysicianName": v["ReferringPhysicianName"].split("^")[1],
    }
    for keyword, blob in texts.items():
        assert any(f": {keyword}=" in hit for hit in hits(markers, "t", blob)), keyword
    payload = zlib.compress(pickle.dumps({"args": (v["AccessionNumber"],)}))
    assert not hits(markers, "raw", payload)
    assert search_all(markers, [("rq", b) for b in expanded(payload)])
    model = io.BytesIO()
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("3D/3dmodel.model", f"<metadata>{v['PatientID']}</metadata>" * 50)
    assert not hits(markers, "zip", model.getvalue())
    assert search_all(markers, _members("3mf", model.getvalue()))
    assert not search_all(markers, [("clean", "job 4f2a report: 19991015 triangles 1200")])
