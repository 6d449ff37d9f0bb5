"""The paced socket on a socket pair: heads read without waiting, bodies cut for a pause or
too low a rate, the caller's own timeouts (gunicorn's body drain) kept, writes bounded by
progress rather than by their whole length."""

from __future__ import annotations

import errno
import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from web.server import Limits, PacedSocket, ReceiveTimeout, SendTimeout


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def paced(sock: socket.socket, header: float = 5.0, body: float = 5.0, rate: int = 0,
          send: float = 5.0, cuts: list | None = None) -> PacedSocket:
    s = PacedSocket(sock, Limits(header, body, rate, send),
                    on_cut=None if cuts is None else cuts.append)
    s.setblocking(True)
    return s


def test_a_head_is_taken_as_it_arrives_without_waiting(pair):
    server, client = pair
    s, buf = paced(server), io.BytesIO()
    began = time.monotonic()
    assert s.read_head(buf, 1000) == "partial" and s.head_started is None  # nothing yet
    client.sendall(b"GET / HT")
    assert s.read_head(buf, 1000) == "partial" and s.head_started is not None
    client.sendall(b"TP/1.1\r\nHost: x\r\n\r\nbody")
    assert s.read_head(buf, 1000) == "complete"
    assert time.monotonic() - began < 0.5
    assert buf.getvalue() == b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"
    assert s.gettimeout() is None and server.gettimeout() == 5.0  # blocking: send timeout
    assert s.read_head(buf, 1000) == "complete"  # read ahead: the socket is not touched
    assert s.read_head(io.BytesIO(b"x" * 2000), 1000) == "complete"  # for the parser to refuse
    assert s.read_head(io.BytesIO(b"GET /\n\n"), 1000) == "complete"  # bare LF: refused at once
    client.close()
    assert s.read_head(io.BytesIO(b"GET"), 1000) == "closed"


def test_a_head_is_late_after_the_header_timeout(pair):
    server, client = pair
    s = paced(server, header=0.2)
    client.sendall(b"G")
    assert s.read_head(io.BytesIO(), 1000) == "partial"
    assert not s.head_late(time.monotonic())
    assert s.head_late(time.monotonic() + 0.3)
    s.begin_body(0)
    assert not s.head_late(time.monotonic() + 0.3)


def test_a_body_that_pauses_is_cut(pair):
    server, client = pair
    cuts: list[str] = []
    s = paced(server, body=0.3, rate=4096, cuts=cuts)
    s.begin_body(0)
    client.sendall(b"abc")
    assert s.recv(10) == b"abc"
    began = time.monotonic()
    with pytest.raises(ReceiveTimeout, match=r"no byte for 0\.3 s"):
        s.recv(10)
    assert 0.25 < time.monotonic() - began < 1.0
    assert cuts == ["no byte for 0.3 s"] and s.received == 3
    with pytest.raises(ReceiveTimeout):  # at once, and without another cut
        s.recv(10)
    assert len(cuts) == 1 and server.gettimeout() == 5.0


def _send_every(sock: socket.socket, data: bytes, every: float, stop: threading.Event):
    def run() -> None:
        while not stop.wait(every):
            try:
                sock.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize(("chunk", "cut"), [(50, True), (500, False)])
def test_a_body_under_the_minimum_rate_is_cut_after_its_grace(pair, chunk, cut):
    server, client = pair
    s = paced(server, body=0.5, rate=1000)
    stop = threading.Event()
    sender = _send_every(client, b"x" * chunk, 0.1, stop)  # 500 or 5000 bytes/s
    s.begin_body(0)
    began = time.monotonic()
    try:
        # 500 bytes/s meets the deadline 0.5 s + received / 1000 bytes/s at about 1 s.
        while time.monotonic() - began < 2.0:
            s.recv(4096)
        assert not cut
    except ReceiveTimeout as exc:
        assert cut and "under 1000 bytes/s" in str(exc)
        assert 0.8 < time.monotonic() - began < 1.6
    finally:
        stop.set()
        sender.join()


def test_the_callers_own_timeout_is_kept_and_is_no_cut(pair):
    server, _client = pair
    s = paced(server, body=5.0)
    s.begin_body(0)
    s.settimeout(0.1)
    with pytest.raises(TimeoutError) as raised:
        s.recv(10)
    assert not isinstance(raised.value, ReceiveTimeout) and s.cut is None
    assert s.gettimeout() == 0.1 and server.gettimeout() == 0.1


@pytest.mark.parametrize("body_s", [0.2, 5.0])
def test_gunicorns_body_drain_ends_on_its_deadline_or_ours(pair, body_s):
    server, client = pair
    s = paced(server, body=body_s)
    parser = RequestParser(Config(), s, ("127.0.0.1", 0))
    client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    assert s.read_head(parser.unreader.buf, 100_000) == "complete"
    s.begin_body(3)
    assert next(parser).method == "POST"
    began = time.monotonic()
    assert parser.finish_body(deadline=time.monotonic() + 0.5) is False
    assert time.monotonic() - began < min(body_s, 0.5) + 0.3
    assert (s.cut is not None) == (body_s < 0.5)
    assert s.gettimeout() is None and server.gettimeout() == 5.0


def test_a_write_may_take_long_while_it_progresses(pair):
    server, client = pair
    s = paced(server, send=0.3)
    data = b"x" * (8 * 1024 * 1024)
    received = bytearray()

    def read_slowly() -> None:
        while len(received) < len(data):
            received.extend(client.recv(256 * 1024))
            time.sleep(0.02)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    began = time.monotonic()
    s.sendall(data)
    reader.join()
    assert time.monotonic() - began > 0.3 and bytes(received) == data


@pytest.mark.parametrize("how", ["sendall", "sendfile"])
def test_a_write_the_client_does_not_take_is_a_quiet_broken_pipe(pair, tmp_path, how):
    server, _client = pair
    s = paced(server, send=0.2)
    data = tmp_path / "model.stl"
    data.write_bytes(b"x" * (16 * 1024 * 1024))
    with pytest.raises(SendTimeout) as raised:
        if how == "sendall":
            s.sendall(data.read_bytes())
        else:
            with data.open("rb") as fh:
                s.sendfile(fh)
    assert raised.value.errno == errno.EPIPE  # what gunicorn drops without a traceback
    s.close()
    s.setblocking(True)  # what gunicorn does on a socket it closes: harmless now
    s.close()
