"""The embedded server's guard against slow clients: a gunicorn worker whose threads never
wait on a client's headers, and a socket that bounds how slowly a body may arrive and how
long a write may wait.

gunicorn's ``gthread`` worker reads a request's headers, and the app its body, with
blocking reads in a pool thread: a client sending a byte a second holds a thread as long as
it likes. ``PacedThreadWorker`` reads headers only as they arrive, handing the connection
back to gunicorn's poller (no thread) until the head is complete or its time is up;
``PacedSocket`` paces body reads like Apache's ``mod_reqtimeout`` (``body=T,MinRate=R``).
In production a reverse proxy in front buffers slow clients (``deploy/nginx/``).
An error answered before the request's body was read (413 for a 5 GB Content-Length, 401,
429, 503 …) closes the connection: gunicorn would otherwise read and drop the whole unread
body, holding a thread for as long as the client sends, before the next keep-alive request.

This leans on gunicorn internals (``_DEFER``, ``TConn``, ``pending_conns``, the parser's
unreader): pyproject pins the major version they were read from, and
``tests/service/test_slow_clients.py`` fails on a change.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import ClassVar

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from dicomstl.settings import Settings

log = logging.getLogger(__name__)

#: The end of a request's head; a bare LF too, so that gunicorn's parser refuses it at once.
_HEAD_END = re.compile(rb"\n\r?\n")
_CHUNK = 65536


class ReceiveTimeout(TimeoutError):
    """A request's body arrived too slowly (a pause, or too low an average rate)."""


class SendTimeout(BrokenPipeError):
    """A write made no progress for the send timeout: the client stopped reading. A broken
    pipe (``EPIPE``), so gunicorn drops the connection quietly as for a client that left."""


@dataclass(frozen=True)
class Limits:
    """How long a client may take; seconds, and bytes per second."""

    header_timeout_s: float
    body_timeout_s: float
    body_min_rate: int
    send_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.web_header_timeout_s, settings.web_body_timeout_s,
                   settings.web_body_min_rate, settings.web_send_timeout_s)


def log_late_head(limits: Limits) -> None:
    log.info("closed a connection whose headers took longer than %g s",
             limits.header_timeout_s)


class PacedSocket:
    """A client socket whose reads are paced: a request's head must arrive within
    ``header_timeout_s`` of its first byte, and its body may pause no longer than
    ``body_timeout_s`` nor average under ``body_min_rate`` once that grace is over (a read
    fails past the body's first read + timeout + bytes received / rate). Writes may wait
    ``send_timeout_s`` for progress.

    A timeout set by the caller (gunicorn's body drain sets one) is kept: a read waits for
    whichever ends first, and only the pacing's own expiry counts as a cut. Anything else is
    the real socket's.
    """

    def __init__(self, sock: socket.socket, limits: Limits, on_cut=None):
        self._sock = sock
        self._limits = limits
        self._timeout = sock.gettimeout()  # what the caller asked for
        self.on_cut = on_cut  # called with the reason when a body read is cut
        self.head_started: float | None = None  # the first byte of the head now arriving
        self._in_body = False  # the head is complete
        self._body_started: float | None = None  # the body's first read
        self._last_byte = 0.0
        self._received = 0
        self.cut: str | None = None
        self.closed = False

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    # -- timeouts, as the caller sees them --------------------------------------------------

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._restore()

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def _restore(self) -> None:
        """The real socket's timeout between reads: the caller's, or the send timeout where
        the caller would block without end."""
        if not self.closed:
            self._sock.settimeout(self._limits.send_timeout_s if self._timeout is None
                                  else self._timeout)

    # -- the request's phases ----------------------------------------------------------------

    def read_head(self, buf: io.BytesIO, limit: int) -> str:
        """Move what has arrived into ``buf`` (the parser's read-ahead) without waiting.

        Returns "complete" when ``buf`` holds a whole head, or more than ``limit`` bytes for
        the parser to refuse; "closed" when the client closed or reset the connection first;
        "partial" otherwise. Reading stops at the end of the head: the body is the app's.
        """
        data = buf.getvalue()
        if data and self.head_started is None:
            self.head_started = time.monotonic()
        if _HEAD_END.search(data) or len(data) > limit:
            return "complete"
        buf.seek(0, io.SEEK_END)
        self._sock.settimeout(0.0)
        try:
            while True:
                try:
                    chunk = self._sock.recv(_CHUNK)
                except BlockingIOError:
                    return "partial"
                except ConnectionError:
                    return "closed"
                if not chunk:
                    return "complete" if _HEAD_END.search(buf.getvalue()) else "closed"
                if self.head_started is None:
                    self.head_started = time.monotonic()
                buf.write(chunk)
                data = buf.getvalue()
                if _HEAD_END.search(data, max(0, len(data) - len(chunk) - 2)) \
                        or len(data) > limit:
                    return "complete"
        finally:
            self._restore()

    def head_late(self, now: float) -> bool:
        """Whether a head has been arriving for longer than the header timeout."""
        return not self._in_body and self.head_started is not None and \
            now - self.head_started > self._limits.header_timeout_s

    def begin_body(self, buffered: int) -> None:
        """The head is complete; ``buffered`` bytes after it were read with it. The body's
        clock starts at its first read, so time the app takes before it reads is not the
        client's."""
        self.head_started = self._body_started = None
        self._in_body = True
        self._received = buffered

    def next_request(self) -> None:
        """The request is answered; the connection waits for the next head."""
        self.head_started = self._body_started = None
        self._in_body = False

    # -- paced reads -------------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._paced(self._sock.recv, bufsize, flags)
        return b"" if data is None else self._count(data, len(data))

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        count = self._paced(self._sock.recv_into, buffer, nbytes, flags)
        return 0 if count is None else self._count(count, count)

    def _count(self, result, size: int):
        if self._in_body and size:
            self._received += size
            self._last_byte = time.monotonic()
        return result

    def _paced(self, read, *args):
        """``read(*args)`` within the pacing's allowance; None when a head ran out of time."""
        if self.cut is not None:
            raise ReceiveTimeout(self.cut)
        if self._timeout == 0.0:
            return read(*args)
        wait = self._allowance(time.monotonic())
        own = self._timeout is None or wait < self._timeout
        # Past a rate deadline the wait is 0: bytes already here are still taken, so a slow
        # reader on this side does not cut a client that kept up.
        self._sock.settimeout(wait if own else self._timeout)
        try:
            return read(*args)
        except (TimeoutError, BlockingIOError):
            if not own:
                raise TimeoutError("timed out") from None
            if not self._in_body:
                self.cut = "headers too slow"
                log_late_head(self._limits)
                return None  # the parser sees the end of the stream
            limits = self._limits
            self.cut = f"no byte for {limits.body_timeout_s:g} s" \
                if time.monotonic() - self._last_byte >= limits.body_timeout_s \
                else f"under {limits.body_min_rate} bytes/s on average"
            if self.on_cut is not None:
                self.on_cut(self.cut)
            raise ReceiveTimeout(self.cut) from None
        finally:
            self._restore()

    def _allowance(self, now: float) -> float:
        """How long the next read may wait (0: only for what has already arrived)."""
        limits = self._limits
        if not self._in_body:  # the parser reads a head only when it is overlong
            started = self.head_started if self.head_started is not None else now
            return max(0.0, started + limits.header_timeout_s - now)
        if self._body_started is None:
            self._body_started = self._last_byte = now
        wait = limits.body_timeout_s
        if limits.body_min_rate > 0:
            wait = min(wait, self._body_started + limits.body_timeout_s
                       + self._received / limits.body_min_rate - now)
        return max(0.0, wait)

    @property
    def in_body(self) -> bool:
        """Whether the current request's head is complete."""
        return self._in_body

    @property
    def received(self) -> int:
        """Body bytes received for the current request."""
        return self._received

    # -- writes, bounded by progress ---------------------------------------------------------

    def sendall(self, data, flags: int = 0) -> None:
        """Like ``socket.sendall``, with the timeout bounding each wait rather than the whole
        write, as nginx's ``send_timeout`` does: a big response to a slow client is fine."""
        with memoryview(data) as view, view.cast("B") as rest:
            while rest:
                try:
                    sent = self._sock.send(rest, flags)
                except TimeoutError:
                    raise self._send_timeout() from None
                rest = rest[sent:]

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        try:
            return self._sock.sendfile(file, offset, count)
        except TimeoutError:
            raise self._send_timeout() from None

    def _send_timeout(self) -> OSError:
        if self._timeout is not None:
            return TimeoutError("timed out")
        log.info("closed a connection that took no response data for %g s",
                 self._limits.send_timeout_s)
        return SendTimeout(errno.EPIPE, "the client stopped reading the response")

    # -- closing -----------------------------------------------------------------------------

    def linger(self) -> None:
        """gunicorn's graceful close (send FIN, drain what the client still sends, close),
        here in the pool thread rather than in the worker's main loop, which must never
        wait on a client."""
        if not self.closed:
            self.closed = True
            util.close_graceful(self._sock)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()


def body_unread(environ: dict) -> bool:
    """Whether the request's body has bytes the app never read (gunicorn's input)."""
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > 0
    return reader is not None  # chunked or read-to-EOF: its end is unknown, so assume unread


def close_on_unread_errors(app):
    """WSGI middleware: an error answered with the body still unread says "Connection:
    close" and closes (``start_response`` is bound to gunicorn's response object)."""

    def wrapped(environ, start_response):
        def start(status: str, headers, exc_info=None):
            response = getattr(start_response, "__self__", None)
            if status[:1] in "45" and response is not None and body_unread(environ):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


class PacedThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, with every client's pace bounded by ``limits`` (set by
    ``serve()`` before the workers fork). TLS and HTTP/2, which we never enable (a proxy
    terminates TLS), are left to the parent as they are."""

    limits: ClassVar[Limits | None] = None
    #: How often the main loop looks for heads past their time among waiting connections.
    sweep_interval_s: ClassVar[float] = 0.25

    def init_process(self) -> None:
        if self.limits is None:
            raise RuntimeError("PacedThreadWorker.limits must be set before the workers start")
        cfg = self.cfg
        # The most a head may hold before gunicorn's parser refuses it (its own arithmetic).
        fields = cfg.limit_request_fields if 0 < cfg.limit_request_fields <= 32768 else 32768
        field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190
        line = cfg.limit_request_line if cfg.limit_request_line > 0 else 1024 * 1024
        self._head_limit = line + fields * (field_size + 2) + 4
        self._next_sweep = 0.0
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = close_on_unread_errors(self.wsgi)

    def _paces(self, conn) -> bool:
        return not self.cfg.is_ssl and not conn.is_http2 and \
            not negotiation.prior_knowledge_allowed(self.cfg, conn.client) and \
            not negotiation.upgrade_allowed(self.cfg, conn.client)

    def handle(self, conn):
        """Serve a request once its head has arrived; until then the connection waits in the
        poller (``_DEFER``), holding no thread. Runs in a pool thread."""
        if not self._paces(conn):
            return super().handle(conn)
        sock = conn.sock
        if not isinstance(sock, PacedSocket):
            sock = conn.sock = PacedSocket(sock, self.limits)
            conn.init()  # the parser reads through the paced socket
            sock.on_cut = lambda reason: self._body_cut(conn, reason)
        state = sock.read_head(conn.parser.unreader.buf, self._head_limit)
        if state == "complete":
            data = conn.parser.unreader.buf.getvalue()
            end = _HEAD_END.search(data)
            if end is not None:  # an overlong head stays paced as a head for the parser
                sock.begin_body(len(data) - end.end())
            keep = super().handle(conn)
            if keep:
                sock.next_request()
            elif sock.cut is not None and not sock.in_body:
                sock.close()  # a head out of time: nothing was answered
            else:
                sock.linger()
            return keep
        if state == "partial" and self.alive:
            if not sock.head_late(time.monotonic()):
                return _DEFER
            log_late_head(self.limits)
        sock.close()  # nothing was answered: no need to linger
        return False

    def _body_cut(self, conn, reason: str) -> None:
        request = conn.parser.mesg
        request.force_close()  # the answer says "Connection: close": the body's rest is unread
        log.warning("cut the body of a %s request after %d bytes: %s", request.method,
                    conn.sock.received, reason)

    def murder_pending(self) -> None:
        """Close waiting connections idle for the keep-alive time (gunicorn), and those
        whose head has been arriving for longer than the header timeout."""
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        late = [conn for conn in self.pending_conns
                if isinstance(conn.sock, PacedSocket) and conn.sock.head_late(now)]
        for conn in late:
            self.pending_conns.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            log_late_head(self.limits)
            conn.close()
