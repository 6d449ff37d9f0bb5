"""Slow clients hold no web thread for long (real gunicorn processes): headers trickled a
byte a second and a stalled or too slow upload are cut in bounded time while /healthz stays
fast; a steady upload, keep-alive, pipelining and a head sent in pieces still work."""

from __future__ import annotations

import io
import json
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.service.helpers import auth, wait_for
from web.server import ReceiveTimeout

HEADER_S, BODY_S, MIN_RATE = 2.0, 3.0, 4096
KEEPALIVE_S = 5.0  # serve()'s keepalive: how long a silent new connection may wait
SLACK_S = 3.0  # a loaded 2-core machine; still far below the 60 s a client was held
FAST_S = 1.0  # what a /healthz must answer within, however many slow clients there are
BOUNDARY = "slowclientboundary"


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "DICOMSTL_WEB_HEADER_TIMEOUT_S": str(HEADER_S),
            "DICOMSTL_WEB_BODY_TIMEOUT_S": str(BODY_S),
            "DICOMSTL_WEB_BODY_MIN_RATE": str(MIN_RATE)}


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


class HealthProbes:
    """``count`` GET /healthz, one every ``every`` s, each on its own thread and connection
    (2 s timeout); ``latencies`` holds the seconds each took, None for a failure."""

    def __init__(self, url: str, count: int, every: float):
        self.latencies: list[float | None] = [None] * count
        start = time.monotonic() + 0.2
        self._threads = [threading.Thread(target=self._probe, args=(url, i, start + i * every))
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def _probe(self, url: str, i: int, at: float) -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        began = time.monotonic()
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                self.latencies[i] = time.monotonic() - began
        except requests.RequestException:
            pass

    def worst(self) -> float:
        for t in self._threads:
            t.join()
        return max(float("inf") if x is None else x for x in self.latencies)


def trickle_heads(url: str, count: int, give_up_s: float) -> list[float | None]:
    """``count`` connections sending a request's head a byte a second; how long after its
    first byte the server closed each one (None: not within ``give_up_s``)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nUser-Agent: a byte a second\r\n\r\n"
    socks = [socket.create_connection(address(url)) for _ in range(count)]
    started = time.monotonic()
    closed: list[float | None] = [None] * count
    try:
        for i in range(len(head)):
            now = time.monotonic()
            if now - started > give_up_s or all(c is not None for c in closed):
                break
            for k, s in enumerate(socks):
                if closed[k] is None:
                    try:
                        s.send(head[i:i + 1])
                    except OSError:
                        closed[k] = time.monotonic() - started
            second = now + 1.0
            while (left := second - time.monotonic()) > 0:
                open_ = [s for k, s in enumerate(socks) if closed[k] is None]
                readable = select.select(open_, [], [], left)[0] if open_ else []
                if not readable:
                    break
                for s in readable:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        closed[socks.index(s)] = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    return closed


def closed_within(socks: list[socket.socket], seconds: float) -> bool:
    """Whether the server closed every one of ``socks`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    waiting = list(socks)
    while waiting and (left := deadline - time.monotonic()) > 0:
        for s in select.select(waiting, [], [], left)[0]:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                waiting.remove(s)
    return not waiting


def read_answer(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and how long that took."""
    began = time.monotonic()
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return data, time.monotonic() - began


def upload_head(url: str, key: str, length: int) -> bytes:
    host, port = address(url)
    return (f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: application/json\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; "
             "filename=\"slice.dcm\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


def check_408(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in head.lower()
    assert "too slowly" in json.loads(body)["error"]


@pytest.mark.slow
def test_heads_trickled_a_byte_a_second_hold_no_thread_and_are_cut(web_url):
    silent = [socket.create_connection(address(web_url)) for _ in range(10)]
    try:
        probes = HealthProbes(web_url, count=24, every=0.25)
        cut_after = trickle_heads(web_url, 20, HEADER_S + SLACK_S + 1)
        worst = probes.worst()
        print(f"worst /healthz {worst:.3f} s; heads cut after "
              f"{[None if c is None else round(c, 1) for c in cut_after]} s")
        assert worst < FAST_S, probes.latencies
        assert all(c is not None and c < HEADER_S + SLACK_S for c in cut_after), cut_after
        assert closed_within(silent, KEEPALIVE_S + SLACK_S)
    finally:
        for s in silent:
            s.close()


@pytest.mark.parametrize("sent", [100, 200_000])
def test_a_stalled_upload_is_answered_408_and_leaves_no_parts(web_url, api_key, settings,
                                                              sent):
    body = (PART_HEAD + b"\0" * sent)[:sent]
    with socket.create_connection(address(web_url)) as s:
        s.sendall(upload_head(web_url, api_key.key, 100 * 1024 * 1024) + body)
        if sent > 65536:  # werkzeug parses 64 KiB at a time: a part is on disk by now
            wait_for(lambda: list(settings.incoming_dir.iterdir()), 5, "an upload part")
        probes = HealthProbes(web_url, count=4, every=0.4)
        answer, held = read_answer(s, BODY_S + SLACK_S + 5)
    worst = probes.worst()
    print(f"stalled upload ({sent} bytes) held {held:.2f} s; worst /healthz {worst:.3f} s")
    check_408(answer)
    assert held < BODY_S + SLACK_S
    assert worst < FAST_S, probes.latencies
    assert not list(settings.incoming_dir.iterdir())


def test_a_body_under_the_minimum_rate_is_cut_after_its_grace(web_url, api_key):
    with socket.create_connection(address(web_url)) as s:
        s.sendall(upload_head(web_url, api_key.key, 1024 * 1024) + PART_HEAD)
        stop = threading.Event()

        def trickle() -> None:  # 200 bytes a second: never a pause, far under 4 KiB/s
            while not stop.wait(1.0):
                try:
                    s.send(b"\0" * 200)
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            answer, held = read_answer(s, BODY_S + SLACK_S + 5)
        finally:
            stop.set()
            sender.join()
    print(f"a body at 200 B/s was cut after {held:.2f} s")
    check_408(answer)
    assert BODY_S - 0.5 < held < BODY_S + SLACK_S


def test_a_steady_upload_with_a_short_pause_completes(web_url, api_key):
    chunk = b"\1" * 16384
    body = PART_HEAD + chunk * 12 + f"\r\n--{BOUNDARY}--\r\n".encode()
    with socket.create_connection(address(web_url)) as s:
        s.sendall(upload_head(web_url, api_key.key, len(body)) + PART_HEAD)
        began = time.monotonic()
        for i in range(12):  # 64 KiB/s, with a pause of half the body timeout
            time.sleep(BODY_S / 2 if i == 6 else 0.25)
            s.sendall(chunk)
        s.sendall(body[len(PART_HEAD) + len(chunk) * 12:])
        took = time.monotonic() - began
        s.settimeout(10)
        answer = s.recv(65536)
    assert took > BODY_S  # past the grace, so the rate counted
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


def test_keep_alive_pipelining_and_a_head_in_pieces_still_work(web_url, api_key):
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(web_url + "/healthz", timeout=5).ok
        assert session.get(web_url + "/", timeout=5).ok
        r = session.post(web_url + "/api/v1/jobs", headers=auth(api_key), timeout=10,
                         files={"files": ("slice.dcm", b"\1" * 1000)})
        assert r.status_code == 201, r.text
        assert session.get(web_url + "/healthz", timeout=5).ok
        pools = session.get_adapter(web_url).poolmanager.pools
        (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 (no iteration there)
        assert (pool.num_connections, pool.num_requests) == (1, 6)  # one connection for all
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(address(web_url)) as s:  # the second read ahead
        s.sendall(one + last)
        answer, _ = read_answer(s, 5)
    assert answer.count(b"HTTP/1.1 200") == 2, answer
    with socket.create_connection(address(web_url)) as s:  # waits in the poller between
        for piece in (last[:10], last[10:30], last[30:]):
            s.sendall(piece)
            time.sleep(0.3)
        answer, _ = read_answer(s, 5)
    assert answer.startswith(b"HTTP/1.1 200"), answer


class _Stalled(io.RawIOBase):
    """An input stream as the server gives it once it cut a body."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        raise ReceiveTimeout("no byte for 3 s")


@pytest.mark.parametrize(("path", "accept", "html"), [
    ("/upload", "text/html", True), ("/api/v1/jobs", "application/json", False)])
def test_a_cut_body_is_answered_408_in_the_clients_format(app, api_key, path, accept, html):
    r = app.test_client().post(
        path, environ_overrides={"wsgi.input": _Stalled(), "CONTENT_LENGTH": "100000"},
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        headers={"Accept": accept, **auth(api_key)})
    assert r.status_code == 408
    text = r.get_data(as_text=True)
    assert "arrived too slowly (under 4 KiB/s, or a pause of 3 s)" in text
    assert ("<html" in text.lower()) == html
