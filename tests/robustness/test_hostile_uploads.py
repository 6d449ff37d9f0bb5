"""Hostile uploads get a clear, early answer and cost the server nothing lasting (real gunicorn
over loopback where the transport matters, the in-process app elsewhere):

- a 5 GB Content-Length is refused with 413 before the body is read, and the connection is
  closed rather than drained; a chunked body without a length is cut at the limit while the
  web worker's peak memory stays flat (read from /proc);
- a truncated or malformed multipart body is a clear 400 and leaves no part in ``incoming/``;
- wrong content types on every upload and JSON route are a 400 in the client's format;
- oversized JSON is a 413 saying so; oversized headers and request lines get gunicorn's
  431/414 and the server keeps serving;
- file names with control characters or 10 kB long are accepted but never stored or logged;
- a body trickled at 1 byte/s to a worker with a single thread is cut, and the request that
  waited for that thread is served (tests/service/test_slow_clients.py proves the cut and
  that other threads stay free; this proves the cut thread itself comes back).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.service.helpers import auth, command_line, descendants, file_parts

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MiB = 1024**2
LIMIT = 16 * MiB  # the upload limit these tests' servers run with
BOUNDARY = "hostileboundary"
JSON = {"Accept": "application/json"}


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    """One web thread (so a held thread shows), a 16 MiB upload limit, a 2 s body timeout."""
    return {**service_env, "DICOMSTL_MAX_UPLOAD_BYTES": str(LIMIT),
            "DICOMSTL_WEB_BODY_TIMEOUT_S": "2", "DICOMSTL_WEB_BODY_MIN_RATE": "4096",
            "DICOMSTL_WEB_THREADS": "1"}


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def answer_of(s: socket.socket, timeout: float = 10) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within ``timeout`` s."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    return status, headers, body


def upload_head(url: str, key: str, extra: str, path: str = "/api/v1/jobs",
                accept: str = "application/json") -> bytes:
    host, port = address(url)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Accept: {accept}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"{extra}\r\n").encode()


PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; "
             "filename=\"slice.dcm\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


def web_worker_pid() -> int:
    """The pid of this test's gunicorn worker (the child of the ``serve`` process)."""
    served = [p for p in descendants(os.getpid()) if "dicomstl_cli serve" in command_line(p)]
    workers = [p for p in served if any(p in descendants(q) for q in served)]
    assert len(workers) == 1, [command_line(p) for p in descendants(os.getpid())]
    return workers[0]


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def healthy(url: str) -> bool:
    return requests.get(url + "/healthz", timeout=5).status_code == 200


def a_5_gb_upload_is_refused_before_its_body_and_not_drained(web_url, api_key, settings):
    five_gb = 5 * 1024**3
    for path, accept in (("/api/v1/jobs", "application/json"), ("/upload", "text/html")):
        with socket.create_connection(address(web_url)) as s:
            s.sendall(upload_head(web_url, api_key.key, f"Content-Length: {five_gb}\r\n",
                                  path, accept) + PART_HEAD + b"\0" * 4096)
            answer, closed = answer_of(s)
        status, headers, body = split(answer)
        assert status.startswith("HTTP/1.1 413"), answer[:300]
        assert "larger than the limit of 16 MiB" in body.decode()
        assert headers["content-type"].startswith(accept)
        # closed at once: the server does not read (and drop) the 5 GB before the next request
        assert closed and headers["connection"] == "close", headers
    assert not list(settings.incoming_dir.iterdir())
    assert healthy(web_url)


def a_chunked_body_past_the_limit_is_cut_with_flat_memory(web_url, api_key, settings):
    good = requests.post(web_url + "/api/v1/jobs", headers=auth(api_key), timeout=10,
                         files={"files": ("slice.dcm", b"\1" * (4 * MiB))})
    assert good.status_code == 201, good.text  # warm: the worker's first upload is done
    worker = web_worker_pid()
    before = peak_rss(worker)
    sent = 0
    chunk = b"\0" * (256 * 1024)
    with socket.create_connection(address(web_url)) as s:
        s.sendall(upload_head(web_url, api_key.key, "Transfer-Encoding: chunked\r\n"))
        frame = b"%x\r\n" % len(PART_HEAD) + PART_HEAD + b"\r\n"
        try:
            while sent < 4 * LIMIT:  # 64 MiB, 4 times the limit
                s.sendall(frame)
                sent += len(frame)
                frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the rest is not read
        answer, closed = answer_of(s)
    status, headers, body = split(answer)
    grew = peak_rss(worker) - before
    print(f"chunked: sent {sent / MiB:.0f} MiB, worker peak RSS grew {grew / MiB:.1f} MiB")
    assert status.startswith("HTTP/1.1 413"), answer[:300]
    assert "larger than the limit" in json.loads(body)["error"]
    assert closed and headers["connection"] == "close"
    assert grew < LIMIT / 2, f"the web worker's peak memory grew {grew / MiB:.1f} MiB"
    assert not list(settings.incoming_dir.iterdir())
    assert healthy(web_url)


def oversized_heads_are_refused_and_the_server_keeps_serving(web_url):
    heads = {
        "a 20 kB header": "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 20000 + "\r\n",
        "200 headers": "GET /healthz HTTP/1.1\r\nHost: x\r\n"
                       + "".join(f"X-{i}: a\r\n" for i in range(200)),
        "a 10 kB request line": "GET /healthz?" + "a" * 10000 + " HTTP/1.1\r\nHost: x\r\n",
        "a 1 MB cookie": "GET / HTTP/1.1\r\nHost: x\r\nCookie: s=" + "c" * 10**6 + "\r\n",
    }
    for what, head in heads.items():
        with socket.create_connection(address(web_url)) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(head.encode() + b"Connection: close\r\n\r\n")  # may be cut
            answer, closed = answer_of(s)
        assert closed, what
        assert answer.split(b" ", 2)[1] in (b"400", b"414", b"431"), (what, answer[:200])
        assert healthy(web_url), what


def a_body_trickled_to_the_only_thread_is_cut_and_frees_it(url, api_key, settings):
    """One web thread: a body at 1 byte/s holds it until the body timeout (2 s) cuts it; the
    request that arrived meanwhile waits for that thread and is then served."""
    slow = socket.create_connection(address(url))
    slow.sendall(upload_head(url, api_key.key, "Content-Length: 100000\r\n") + PART_HEAD)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            try:
                slow.send(b"\1")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    time.sleep(0.5)  # the slow body now holds the only thread
    waiting = socket.create_connection(address(url))
    waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        cut, _ = answer_of(slow, 15)
        served, closed = answer_of(waiting, 15)
    finally:
        stop.set()
        sender.join()
        slow.close()
        waiting.close()
    assert split(cut)[0].startswith("HTTP/1.1 408"), cut[:300]
    assert "too slowly" in json.loads(split(cut)[2])["error"]
    assert split(served)[0].startswith("HTTP/1.1 200") and closed, served[:300]
    assert healthy(url)  # and the one after
    assert not list(settings.incoming_dir.iterdir())


def test_hostile_transport_against_the_live_server(web_url, api_key, settings):
    """The live gunicorn (one worker, one thread) through each attack in turn, still serving
    after each (one server for all: its start costs more than the checks)."""
    a_chunked_body_past_the_limit_is_cut_with_flat_memory(web_url, api_key, settings)
    a_5_gb_upload_is_refused_before_its_body_and_not_drained(web_url, api_key, settings)
    oversized_heads_are_refused_and_the_server_keeps_serving(web_url)
    a_body_cut_by_the_client_is_a_clear_400(web_url, api_key, settings)
    a_body_trickled_to_the_only_thread_is_cut_and_frees_it(web_url, api_key, settings)


# -- in-process: the app's answers -----------------------------------------------------------

def post_raw(client, path: str, body: bytes, content_type: str, key=None, accept=JSON):
    return client.post(path, data=body, content_type=content_type,
                       headers={**(auth(key) if key else {}), **accept})


@pytest.mark.parametrize("body", [
    PART_HEAD + b"\1" * 5000,  # cut inside the file part
    PART_HEAD[:40],  # cut inside a part's headers
    b"--" + BOUNDARY.encode() + b"\r\ngarbage without headers",
], ids=["in the data", "in the part head", "malformed"])
def test_a_truncated_multipart_body_is_a_clear_400_leaving_nothing(app, settings, api_key,
                                                                  body):
    r = post_raw(app.test_client(), "/api/v1/jobs", body,
                 f"multipart/form-data; boundary={BOUNDARY}", api_key)
    assert r.status_code == 400
    assert "incomplete or malformed" in r.json["error"], r.json
    assert not list(settings.incoming_dir.iterdir())


def a_body_cut_by_the_client_is_a_clear_400(web_url, api_key, settings):
    with socket.create_connection(address(web_url)) as s:
        s.sendall(upload_head(web_url, api_key.key, "Content-Length: 1000000\r\n")
                  + PART_HEAD + b"\1" * 100_000)
        s.shutdown(socket.SHUT_WR)  # the client gives up half-way
        answer, _ = answer_of(s)
    status, _headers, body = split(answer)
    assert status.startswith("HTTP/1.1 400"), answer[:300]
    assert "incomplete or malformed" in json.loads(body)["error"]
    assert not list(settings.incoming_dir.iterdir())


def test_wrong_content_types_get_a_clear_400_in_the_clients_format(app, settings, api_key):
    from dicomstl import jobs

    client = app.test_client()
    job_id = client.post("/api/v1/jobs", data={"files": [(io.BytesIO(b"x"), "a")]},
                         content_type="multipart/form-data", headers=auth(api_key)).json["id"]
    assert jobs.get_job(settings, job_id).state == "queued"
    for content_type in ("application/json", "text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data", "image/png", ""):
        r = post_raw(client, "/api/v1/jobs", b'{"files": "x"}', content_type, api_key)
        assert r.status_code in (400, 415), (content_type, r.status_code)
        assert r.is_json and ("multipart/form-data" in r.json["error"]
                              or "incomplete or malformed" in r.json["error"]), r.json
    for route, what in ((f"/api/v1/jobs/{job_id}/series", "series"),
                        (f"/api/v1/jobs/{job_id}/level", "level")):
        for content_type in ("text/plain", "multipart/form-data; boundary=x",
                             "application/x-www-form-urlencoded", "application/xml"):
            r = post_raw(client, route, b'{"%s": 1}' % what.encode(), content_type, api_key)
            assert r.status_code == 400 and what in r.json["error"], (route, content_type)
    page = post_raw(client, "/upload", b"{}", "application/json", accept={"Accept": "text/html"})
    assert page.status_code == 400 and b"<html" in page.data.lower()
    assert not list(settings.incoming_dir.iterdir())


def test_oversized_json_is_a_clear_413_before_it_is_read(app, settings, api_key):
    client = app.test_client()
    job_id = client.post("/api/v1/jobs", data={"files": [(io.BytesIO(b"x"), "a")],
                                               "options": '{"preview": true}'},
                         content_type="multipart/form-data", headers=auth(api_key)).json["id"]
    big = b'{"level": 300, "pad": "' + b"x" * (2 * MiB) + b'"}'
    for route in (f"/api/v1/jobs/{job_id}/level", f"/api/v1/jobs/{job_id}/series"):
        r = post_raw(client, route, big, "application/json", api_key)
        assert r.status_code == 413, route
        assert "request body is larger than the limit of 1 MiB" in r.json["error"]
    ok = post_raw(client, f"/api/v1/jobs/{job_id}/level", b'{"level": 300}',
                  "application/json", api_key)
    assert ok.status_code == 409  # a small body is read as before (no preview yet)


@pytest.mark.parametrize("name", ["I1\x1b[31m\x07\x7f\tINJECTED\x00.dcm",
                                  "I1\r\nX-Evil: 1\r\n\r\nINJECTED.dcm", "I" * 10_000 + ".dcm"],
                         ids=["control characters", "CR LF", "10 kB"])
def test_hostile_file_names_are_accepted_but_never_stored_or_logged(app, settings, api_key,
                                                                   series, name, caplog):
    client = app.test_client()
    parts = [(fh, name) for fh, _ in file_parts(series)]
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/v1/jobs", data={"files": parts},
                        content_type="multipart/form-data", headers=auth(api_key))
    assert r.status_code == 201 or (r.status_code == 400 and "no files" in r.json["error"]), \
        r.json
    assert "INJECTED" not in r.get_data(as_text=True) and "I" * 200 not in r.get_data(
        as_text=True)
    stored = [p for p in settings.data_dir.rglob("*")]
    if r.status_code == 201:
        assert len([p for p in stored if p.is_file()]) >= len(series)
    for p in stored:
        assert p.name.isprintable() and len(p.name) < 255 and "INJECTED" not in p.name, p
    assert "INJECTED" not in caplog.text and "I" * 200 not in caplog.text
