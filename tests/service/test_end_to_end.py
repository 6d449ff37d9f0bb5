"""The whole service over HTTP: gunicorn, a real worker process, a real redis-server and the
database (SQLite, and PostgreSQL when it answers), with real series from ../shared/data."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import zipfile
from datetime import datetime

import numpy as np
import pytest
import trimesh

from dicomstl import apikeys, jobs
from dicomstl_cli.client import ApiError, Client
from dicomstl_cli.main import main as cli_main
from tests.service.helpers import wait_for


def test_mixed_session_upload_choose_convert_download(shared_dicom, web_url, worker, settings,
                                                      api_key, tmp_path):
    """A real CT exam folder (a localizer, a brain series, dose reports) plus an MR series in
    one upload: the job asks which of the two volumes to convert, converts the CT, and the STL
    is a closed mesh matching the report; the upload is gone afterwards."""
    worker()
    client = Client(web_url, api_key.key)
    seen: list[int] = []
    job = client.submit([shared_dicom / "ct-session-mixed", shared_dicom / "mr-enhanced-sag"],
                        {"level": 300},
                        progress=lambda done, total: seen.append(done))
    assert seen and seen[-1] == max(seen) > 15_000_000  # the progress callback saw the bytes
    job = client.wait(job["id"], poll_s=0.3, timeout_s=180)
    assert job["state"] == "uploaded" and job["message"].startswith("the upload holds several")
    assert sorted(c["modality"] for c in job["choices"]) == ["CT", "MR"]
    brain = [c for c in job["choices"] if c["slices"] == 28]
    assert len(brain) == 1 and brain[0]["size"] == [512, 512, 28]
    assert (settings.jobs_dir / job["id"] / "upload").is_dir()  # kept until converted
    job = client.choose_series(job["id"], brain[0]["uid"])
    # The worker may take the job before the answer is written; the run that found the
    # series was the first attempt.
    assert (job["state"], job["attempts"]) in (("queued", 1), ("running", 2))
    job = client.wait(job["id"], poll_s=0.3, timeout_s=180)
    assert job["state"] == "done", job["message"]
    assert job["stages_done"] == job["stages"] and job["progress"] == 1.0
    assert job["attempts"] == 2
    assert not (settings.jobs_dir / job["id"] / "upload").exists()  # deleted at once
    model = client.download(job["id"], tmp_path / "brain.stl")
    assert model.stat().st_size == job["result_bytes"]
    mesh = trimesh.load(model, force="mesh")
    mesh.merge_vertices()
    assert mesh.is_watertight and mesh.volume > 0
    report = job["report"]["mesh"]
    assert len(mesh.faces) == report["triangles"]
    assert np.allclose(mesh.bounds, [report["bbox_min_mm"], report["bbox_max_mm"]], atol=1e-3)
    # The job's deadline is one hour after the conversion ended.
    finished = job["finished_at"].replace("Z", "+00:00")
    deadline = job["delete_after"].replace("Z", "+00:00")
    gap = datetime.fromisoformat(deadline) - datetime.fromisoformat(finished)
    assert abs(gap.total_seconds() - settings.result_ttl_s) < 1
    gone = client.delete(job["id"])
    assert gone["state"] == "deleted" and not (settings.jobs_dir / job["id"]).exists()
    with pytest.raises(ApiError) as err:
        client.download(job["id"], tmp_path / "again.stl")
    assert err.value.status == 410


def test_non_dicom_and_bad_zip_fail_with_clear_messages(shared_dicom, web_url, worker, api_key,
                                                        settings, tmp_path):
    worker()
    client = Client(web_url, api_key.key)
    text = tmp_path / "notes"
    text.mkdir()
    (text / "report.txt").write_text("not an image\n" * 100)
    job = client.wait(client.submit([text])["id"], poll_s=0.3, timeout_s=120)
    assert job["state"] == "failed" and "DICOM" in job["message"]
    bomb = client.wait(client.submit([shared_dicom / "broken" / "zip-bomb.zip"])["id"],
                       poll_s=0.3, timeout_s=120)
    assert bomb["state"] == "failed" and "zip bomb" in bomb["message"]
    for job_id in (job["id"], bomb["id"]):
        assert not (settings.jobs_dir / job_id / "upload").exists()
    assert "Traceback" not in job["message"] + bomb["message"]


@pytest.fixture
def service_env(service_env: dict[str, str], request) -> dict[str, str]:
    """The service's environment plus what a test gives (``indirect`` parametrization)."""
    return {**service_env, **getattr(request, "param", {})}


#: plain http to a receiver on this machine, which the callback rules refuse by default
LOCAL_CALLBACKS = {"DICOMSTL_CALLBACK_ALLOW_HTTP": "1",
                   "DICOMSTL_CALLBACK_ALLOWED_HOSTS": "127.0.0.1"}


@pytest.mark.parametrize("service_env", [LOCAL_CALLBACKS], ids=["local-callbacks"],
                         indirect=True)
def test_submit_command_and_signed_callback(shared_dicom, web_url, worker, api_key, tmp_path,
                                            capsys):
    """`dicomstl submit --wait` as a clinic runs it; the callback arrives signed."""
    received: list[tuple[bytes, str]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers.get("X-Dicomstl-Signature", "")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker()
    out = tmp_path / "models"
    code = cli_main(["submit", str(shared_dicom / "mr-enhanced-sag"), "--url", web_url,
                     "--key", api_key.key, "--wait", "--out", str(out), "--callback-url",
                     f"http://127.0.0.1:{server.server_port}/hook"])
    assert code == 0, capsys.readouterr()
    model = out / "mr-enhanced-sag.stl"
    assert model.stat().st_size > 84
    wait_for(lambda: received, 60, "the callback")
    server.shutdown()
    body, signature = received[0]
    assert apikeys.verify(api_key.webhook_secret, body, signature)
    assert not apikeys.verify("whsec_wrong", body, signature)
    event = json.loads(body)
    assert event["event"] == "job.ended" and event["job"]["state"] == "done"


def _kill_while_running(settings, worker_proc, job_id):
    wait_for(lambda: jobs.get_job(settings, job_id).state == "running", 120, "running")
    os.kill(worker_proc.pid, signal.SIGKILL)
    worker_proc.wait()


def test_killed_worker_job_is_rerun_once_then_failed(shared_dicom, settings, worker, api_key,
                                                     tmp_path):
    """SIGKILL the worker mid-job: the scheduler re-runs the job on another worker; killed
    again, the job fails with a clear message and its upload is deleted."""
    from scheduler.main import run_pass

    archive = tmp_path / "head.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for n, path in enumerate(sorted((shared_dicom / "ct-phantom-head-1mm").iterdir())):
            z.write(path, f"{n:05d}")
    first = settings.incoming_dir / "part-test"
    first.write_bytes(archive.read_bytes())
    job, _ = jobs.create_job(settings, "key:1", {"preset": "bone", "max_triangles": 60000},
                             [first], "bulk")
    _kill_while_running(settings, worker(), job.id)
    assert jobs.get_job(settings, job.id).state == "running"  # nobody knows yet
    wait_for(lambda: run_pass(settings)["rerun"], 30, "the scheduler to notice")
    rerun = jobs.get_job(settings, job.id)
    assert rerun.state == "queued" and rerun.run == 2
    assert rerun.attempts == 1 and rerun.lost_runs == 1
    assert (settings.jobs_dir / job.id / "upload").is_dir()  # nothing lost
    _kill_while_running(settings, worker(), job.id)
    wait_for(lambda: run_pass(settings)["failed"], 30, "the scheduler to give up")
    failed = jobs.get_job(settings, job.id)
    assert failed.state == "failed" and "stopped unexpectedly 2 times" in failed.message
    assert not (settings.jobs_dir / job.id / "upload").exists()
    assert not (settings.jobs_dir / job.id / "result").exists()  # no half-written model


def test_no_patient_data_in_logs_job_or_model(web_url, worker, api_key, settings, tmp_path):
    """A synthetic series carrying a patient's name and id converts; neither appears in the
    web and worker logs, the job's JSON, the stored file names or the model."""
    from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, lps_grid, sphere_hu, write_series

    origins = [(0.0, 0.0, 2.0 * k) for k in range(10)]
    grid = lps_grid((10, 32, 32), (1, 0, 0), (0, 1, 0), (1.0, 1.0), origins)
    folder = tmp_path / PATIENT_NAME  # even the folder is named after the patient
    write_series(folder, sphere_hu(grid, (16.0, 16.0, 9.0), 6.0, 1.0), origins=origins)
    worker()
    client = Client(web_url, api_key.key)
    job = client.wait(client.submit([folder], {"level": 0})["id"], poll_s=0.3, timeout_s=120)
    assert job["state"] == "done", job["message"]
    model = client.download(job["id"], tmp_path / "model.stl").read_bytes()
    stored = [p.name for p in settings.data_dir.rglob("*")]
    texts = [(tmp_path / "worker.log").read_text(), (tmp_path / "web.log").read_text(),
             json.dumps(job), " ".join(stored), model[:80].decode("ascii", "replace")]
    for secret in (PATIENT_NAME, PATIENT_ID, "DOE"):
        assert not any(secret in text for text in texts), secret
