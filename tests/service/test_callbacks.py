"""Callbacks over real sockets to local receivers (127.0.0.1): the address is checked again
when sending and the connection goes to exactly that address (DNS rebinding), TLS still checks
the URL's host name, redirects are not followed, and slow or endless answers are cut."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import update
from urllib3.exceptions import NewConnectionError

from dicomstl import apikeys, jobs
from dicomstl.callback_url import MAX_ANSWER_BYTES, CallbackURLError, check_callback_url, post
from dicomstl.callbacks import SIGNATURE_HEADER, CallbackFailed, deliver
from dicomstl.db import Job, session_scope
from dicomstl.settings import Settings
from tests.conftest import require_tool

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
PUBLIC = "93.184.215.14"


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """A TCP server on 127.0.0.1 that counts connections, records each request and answers
    it with ``answer`` (bytes, or a function given the connection); TLS with ``tls``."""

    def __init__(self, answer: bytes | Callable[[socket.socket], None] = NO_CONTENT,
                 tls: ssl.SSLContext | None = None):
        self.answer, self.tls = answer, tls
        self.connections = 0
        self.requests: list[Request] = []
        self.server_names: list[str | None] = []  # what each TLS client sent as SNI
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        self._listener.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.requests.append(_read_request(conn))
            if callable(self.answer):
                self.answer(conn)
            else:
                conn.sendall(self.answer)
        except OSError:
            pass  # the client went away (or refused our certificate)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()


def _read_request(conn: socket.socket) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the client closed before its request was complete")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    while len(body) < int(headers.get("content-length", 0)):
        body += conn.recv(65536)
    return Request(line, headers, body)


@pytest.fixture
def receiver():
    """Start receivers (``receiver(answer, tls)``); all are stopped after the test."""
    started: list[Receiver] = []

    def start(answer: bytes | Callable[[socket.socket], None] = NO_CONTENT,
              tls: ssl.SSLContext | None = None) -> Receiver:
        started.append(Receiver(answer, tls))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def _settings(tmp_path: Path, **changes) -> Settings:
    return Settings(data_dir=tmp_path, database_url="sqlite://", redis_url=None,
                    secret_key="k", **{"callback_allow_http": True, **changes})


def _answers(*rounds: list[str]):
    """A resolver giving each round of answers in turn (the last one from then on)."""
    asked: list[str] = []

    def resolve(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address(a) for a in rounds[min(len(asked), len(rounds)) - 1]]

    resolve.asked = asked
    return resolve


def test_dns_rebinding_is_refused_at_send_time_without_connecting(tmp_path, receiver):
    """Public at submission, 127.0.0.1 when sending: nothing connects to the receiver."""
    hook = receiver()
    settings = _settings(tmp_path)
    url = f"http://rebind.example:{hook.port}/hook"
    resolve = _answers([PUBLIC], ["127.0.0.1"])
    check_callback_url(url, settings, resolve)  # accepted at submission
    refusal = "rebind.example resolves to 127.0.0.1, which is a loopback address"
    with pytest.raises(CallbackURLError, match=re.escape(refusal)):
        post(url, b"{}", {}, settings, resolve)
    with pytest.raises(CallbackURLError, match=re.escape(refusal)):  # one bad among several
        post(url, b"{}", {}, settings, _answers([PUBLIC, "127.0.0.1"]))
    assert resolve.asked == ["rebind.example", "rebind.example"]
    time.sleep(0.3)
    assert hook.connections == 0 and hook.requests == []
    # the same receiver, reached once its name is allowed: it was listening all along
    allowed = replace(settings, callback_allowed_hosts="rebind.example")
    assert post(url, b"{}", {}, allowed, _answers(["127.0.0.1"])).status == 204
    assert hook.connections == 1


def test_the_connection_goes_to_the_checked_address(tmp_path, receiver):
    """The name has no DNS entry: only the resolver's answer can lead to the receiver, and the
    request still names the URL's host (Host header), path and query."""
    hook = receiver()
    settings = _settings(tmp_path, callback_allowed_hosts="receiver.clinic.test")
    resolve = _answers(["127.0.0.1"])
    answer = post(f"http://receiver.clinic.test:{hook.port}/hooks/dicom?clinic=7#x",
                  b'{"event": "job.ended"}', {"Content-Type": "application/json",
                                              SIGNATURE_HEADER: "t=1,v1=ab"}, settings, resolve)
    assert answer.status == 204 and resolve.asked == ["receiver.clinic.test"]
    [request] = hook.requests
    assert request.line == "POST /hooks/dicom?clinic=7 HTTP/1.1"
    assert request.headers["host"] == f"receiver.clinic.test:{hook.port}"
    assert request.headers[SIGNATURE_HEADER.lower()] == "t=1,v1=ab"
    assert request.body == b'{"event": "job.ended"}'
    assert "authorization" not in request.headers


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate (and its key, in one PEM file) for receiver.clinic.test."""
    openssl = require_tool("openssl")  # a failure under CI, a skip elsewhere
    pem = tmp_path_factory.mktemp("tls") / "receiver.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=receiver.clinic.test", "-addext",
                    "subjectAltName=DNS:receiver.clinic.test", "-keyout", str(pem), "-out",
                    str(pem)], check=True, capture_output=True)
    return pem


def _tls(certificate: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    return context


def test_tls_checks_the_urls_host_name_at_the_pinned_address(tmp_path, receiver, certificate):
    hook = receiver(tls=_tls(certificate))
    settings = _settings(tmp_path, callback_allow_http=False,
                         callback_allowed_hosts="receiver.clinic.test,other.clinic.test")
    to_local = _answers(["127.0.0.1"])
    answer = post(f"https://receiver.clinic.test:{hook.port}/hook", b"{}", {}, settings,
                  to_local, ca_certs=str(certificate))
    assert answer.status == 204 and hook.server_names == ["receiver.clinic.test"]
    assert hook.requests[0].headers["host"] == f"receiver.clinic.test:{hook.port}"
    # the same address under another name: the certificate does not match, nothing is sent
    with pytest.raises(ssl.SSLCertVerificationError, match=re.escape("other.clinic.test")):
        post(f"https://other.clinic.test:{hook.port}/hook", b"{}", {}, settings, to_local,
             ca_certs=str(certificate))
    # and a certificate no trusted CA signed is refused (the default bundle: certifi's)
    with pytest.raises(ssl.SSLCertVerificationError):
        post(f"https://receiver.clinic.test:{hook.port}/hook", b"{}", {}, settings, to_local)
    assert len(hook.requests) == 1


def test_a_redirect_is_not_followed(tmp_path, receiver):
    elsewhere = receiver()
    hook = receiver(f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{elsewhere.port}/\r\n"
                    "Content-Length: 0\r\n\r\n".encode())
    settings = _settings(tmp_path, callback_allowed_hosts="127.0.0.1,localhost")
    answer = post(f"http://127.0.0.1:{hook.port}/hook", b"{}", {}, settings)
    assert answer.status == 302 and len(hook.requests) == 1
    time.sleep(0.3)
    assert elsewhere.connections == 0


def _endless_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
    for _ in range(100_000):  # 6.4 GB at most; the client hangs up long before
        conn.sendall(b"x" * 65536)


def test_a_huge_answer_is_cut_at_64_kib(tmp_path, receiver):
    hook = receiver(_endless_body)
    settings = _settings(tmp_path, callback_allowed_hosts="127.0.0.1", callback_timeout_s=5.0)
    started = time.monotonic()
    answer = post(f"http://127.0.0.1:{hook.port}/hook", b"{}", {}, settings)
    assert answer.status == 200 and len(answer.body) == MAX_ANSWER_BYTES == 65536
    assert time.monotonic() - started < 3


def _silence(conn: socket.socket) -> None:
    conn.recv(1)  # until the client hangs up


def _trickle(conn: socket.socket) -> None:
    """A byte of headers every 0.1 s: each read succeeds, the whole answer never ends."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(600):
        conn.sendall(b"X")
        time.sleep(0.1)


@pytest.mark.parametrize("answer", [_silence, _trickle], ids=["silent", "trickling"])
def test_a_slow_receiver_is_cut_by_the_timeout(tmp_path, receiver, answer):
    hook = receiver(answer)
    settings = _settings(tmp_path, callback_allowed_hosts="127.0.0.1", callback_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post(f"http://127.0.0.1:{hook.port}/hook", b"{}", {}, settings)
    assert 0.9 < time.monotonic() - started < 2.5
    assert len(hook.requests) == 1


def test_a_closed_port_is_a_network_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tmp_path, callback_allowed_hosts="127.0.0.1")
    with pytest.raises(NewConnectionError, match="Connection refused"):  # RQ retries it
        post(f"http://127.0.0.1:{port}/hook", b"{}", {}, settings)


# deliver(), the RQ job: a real database and Redis ------------------------------------------

@pytest.fixture
def callback_job(settings: Settings, api_key: apikeys.NewKey):
    """Queue a job of this API key with ``url`` as its callback, pending; its id."""

    def make(url: str) -> str:
        part = settings.incoming_dir / "part-test"
        part.write_bytes(b"not DICOM: the job is never run")
        job, _ = jobs.create_job(settings, f"key:{api_key.id}", {}, [part], "bulk",
                                 callback_url=url, api_key_id=api_key.id)
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job.id).values(callback_pending=True))
        return job.id

    return make


def _pending(settings: Settings, job_id: str) -> bool:
    return jobs.get_job(settings, job_id).callback_pending


def test_deliver_posts_the_signed_job_to_the_pinned_address(settings, api_key, callback_job,
                                                             receiver, monkeypatch):
    hook = receiver()
    local = replace(settings, callback_allow_http=True,
                    callback_allowed_hosts="hooks.clinic.test")
    monkeypatch.setattr("dicomstl.callback_url.resolve_host", _answers(["127.0.0.1"]))
    job_id = callback_job(f"http://hooks.clinic.test:{hook.port}/dicom")
    assert deliver(job_id, local) == 204
    [request] = hook.requests
    assert request.headers["host"] == f"hooks.clinic.test:{hook.port}"
    assert apikeys.verify(api_key.webhook_secret, request.body,
                          request.headers[SIGNATURE_HEADER.lower()])
    assert not _pending(settings, job_id)


def test_deliver_drops_a_callback_whose_host_turned_internal(settings, callback_job, receiver,
                                                              monkeypatch, caplog):
    hook = receiver()
    local = replace(settings, callback_allow_http=True)
    monkeypatch.setattr("dicomstl.callback_url.resolve_host", _answers(["127.0.0.1"]))
    job_id = callback_job(f"http://hooks.clinic.test:{hook.port}/secret-path?token=abc")
    with caplog.at_level(logging.WARNING, logger="dicomstl.callbacks"):
        assert deliver(job_id, local) == 0  # no exception: RQ does not retry it
    [record] = [r for r in caplog.records if r.name == "dicomstl.callbacks"]
    message = record.getMessage()
    assert "hooks.clinic.test resolves to 127.0.0.1, which is a loopback address" in message
    assert "secret-path" not in message and "token" not in message and job_id not in message
    assert hook.connections == 0 and not _pending(settings, job_id)


def test_deliver_raises_for_a_redirect_and_an_error_so_rq_retries(settings, callback_job,
                                                                  receiver):
    elsewhere = receiver()
    redirect = receiver(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: "
                        f"http://127.0.0.1:{elsewhere.port}/\r\nContent-Length: 0\r\n\r\n"
                        .encode())
    broken = receiver(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    local = replace(settings, callback_allow_http=True, callback_allowed_hosts="127.0.0.1")
    for hook, status in [(redirect, 307), (broken, 500)]:
        job_id = callback_job(f"http://127.0.0.1:{hook.port}/hook")
        with pytest.raises(CallbackFailed, match=f"answered HTTP {status}"):
            deliver(job_id, local)
        assert len(hook.requests) == 1 and _pending(settings, job_id)
    time.sleep(0.3)
    assert elsewhere.connections == 0
