"""Callback URLs a clinic may give, and the one way they are called.

A callback URL must be https (plain http only with ``DICOMSTL_CALLBACK_ALLOW_HTTP``), name a
host, carry no user name or password, and every address its host resolves to must be public:
no loopback, private, link-local, shared (100.64/10), multicast, reserved or unspecified
address, nor an IPv6 address that embeds such an IPv4 one (mapped, 6to4, Teredo, NAT64). Hosts
in ``DICOMSTL_CALLBACK_ALLOWED_HOSTS`` skip the address check (on-premise receivers).

``check_callback_url`` runs at submission; ``post`` checks again when the callback is sent and
then connects to exactly the addresses it checked, so a second DNS answer (rebinding) cannot
swap in 127.0.0.1, while TLS still verifies the certificate against the URL's host name. It
never follows a redirect, uses no proxy, and bounds the whole exchange in time and the answer's
body in size.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from requests.certs import where as default_ca_bundle
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from dicomstl import __version__
from dicomstl.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host, port) -> every address the host resolves to; OSError when it does not resolve
Resolver = Callable[[str, int], Sequence[IPAddress]]

MAX_URL_CHARS = 2000
MAX_ANSWER_BYTES = 64 * 1024  # of the receiver's answer body; the rest is never read
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; is_private misses it
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: IPv4 in the last 32 bits
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
#: what inet_aton (and so the system resolver) reads as IPv4: 2130706433, 0177.1, 0x7f.0.0.1
_NUMERIC_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)
_REFUSED = "callback_url must not point to a private or local address: "


class CallbackURLError(ValueError):
    """A callback URL this service will not call; the message tells the clinic why."""


@dataclass(frozen=True)
class Target:
    """Where a checked callback URL leads: host and port, request target, checked addresses."""

    https: bool
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class Answer:
    """The receiver's answer: its status and at most ``MAX_ANSWER_BYTES`` of its body."""

    status: int
    body: bytes


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (system resolver), in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos
                              if info[0] in (socket.AF_INET, socket.AF_INET6)))


def check_callback_url(url: str, settings: Settings, resolve: Resolver | None = None) -> None:
    """Raise CallbackURLError, saying why, unless a callback may be sent to ``url``."""
    try:
        _target(url, settings, resolve or resolve_host)
    except OSError:
        host = _parse(url, settings)[1]
        raise CallbackURLError(f"callback_url's host {host} could not be found (no DNS answer);"
                               " check the name") from None


def post(url: str, body: bytes, headers: Mapping[str, str], settings: Settings,
         resolve: Resolver | None = None, ca_certs: str | None = None) -> Answer:
    """POST ``body`` to ``url`` after checking it again, connected to the checked address.

    CallbackURLError if the URL may not be called (now); OSError or urllib3's HTTPError when
    the network fails, TimeoutError when the answer takes longer than
    ``settings.callback_timeout_s`` (connect, each read, and the whole exchange). A redirect is
    returned as it is, never followed. ``ca_certs``: a CA bundle (default: certifi's).
    """
    target = _target(url, settings, resolve or resolve_host)
    limit = settings.callback_timeout_s
    conn = _connection(target, limit, ca_certs)
    with _Deadline(conn, limit) as deadline:
        try:
            conn.request("POST", target.path, body=body, preload_content=False,
                         decode_content=False,
                         headers={"User-Agent": f"dicomstl/{__version__}",
                                  "Connection": "close", **headers})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException, HTTPError) as exc:
            if deadline.passed:
                raise TimeoutError(f"{target.host} did not answer within {limit:g} s") from exc
            raise
        if deadline.passed:  # cut mid-headers: http.client takes what came as the whole
            raise TimeoutError(f"{target.host} did not answer within {limit:g} s")
        received = b""
        # the status decides; the body is read (a little) only to end the exchange cleanly
        with contextlib.suppress(OSError, http.client.HTTPException, HTTPError):
            received = response.read(MAX_ANSWER_BYTES, decode_content=False)
        response.close()
    return Answer(response.status, received)


# The check ----------------------------------------------------------------------------------

def _target(url: str, settings: Settings, resolve: Resolver) -> Target:
    https, host, port, path = _parse(url, settings)
    return Target(https, host, port, path, _addresses(host, port, settings, resolve))


def _parse(url: str, settings: Settings) -> tuple[bool, str, int, str]:
    """(https, host, port, path and query) of an acceptable URL; CallbackURLError if not."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackURLError(f"callback_url must be at most {MAX_URL_CHARS} characters")
    if not _PRINTABLE.fullmatch(url):
        raise CallbackURLError("callback_url must be plain ASCII without spaces "
                               "(percent-encode other characters)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise CallbackURLError("callback_url is not a valid URL") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    wanted = "an http(s)" if settings.callback_allow_http else "an https"
    if parts.scheme not in ("http", "https"):
        raise CallbackURLError(f"callback_url must be {wanted} URL")
    if parts.scheme == "http" and not settings.callback_allow_http:
        raise CallbackURLError("callback_url must use https: this service does not send "
                               "callbacks over plain http")
    if "@" in parts.netloc:
        raise CallbackURLError("callback_url must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackURLError("callback_url must name a host")
    if port == 0:
        raise CallbackURLError("callback_url's port must be a number from 1 to 65535")
    https = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return https, host, (443 if https else 80) if port is None else port, path


def _addresses(host: str, port: int, settings: Settings,
               resolve: Resolver) -> tuple[IPAddress, ...]:
    """The addresses to connect to, each checked unless ``host`` is allowed; OSError when the
    host does not resolve, CallbackURLError when one of its addresses is not public."""
    literal = _ip_literal(host)
    found = [literal] if literal is not None else list(resolve(host, port))
    if not found:
        raise OSError(f"{host} resolves to no address")
    # an IPv4-mapped address is that IPv4 address: connect and check as IPv4
    addresses = tuple(dict.fromkeys(
        a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a
        for a in found))
    if host in settings.callback_hosts:  # urlsplit gives the host name in lower case
        return addresses
    for address in addresses:
        why = _refusal(address)
        if why is None:
            continue
        if host == str(address):
            raise CallbackURLError(f"{_REFUSED}{host} {why}")
        verb = "stands for" if literal is not None else "resolves to"
        raise CallbackURLError(f"{_REFUSED}{host} {verb} {address}, which {why}")
    return addresses


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the system resolver reads without DNS."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    if _NUMERIC_IPV4.fullmatch(host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def _refusal(address: IPAddress) -> str | None:
    """Why a callback may not go to ``address`` ("is a loopback address"), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.sixtofour, *(address.teredo or ())]
        if address in NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        for inner in filter(None, embedded):
            kind = _kind(inner)
            if kind is not None:
                return f"embeds {inner}, {kind}"
        if address in NAT64:  # the prefix itself is public; Python 3.11 calls it reserved
            return None
    kind = _kind(address)
    return None if kind is None else f"is {kind}"


def _kind(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is, or None if it is public."""
    checks = [("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
              ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address")]
    for attribute, kind in checks:
        if getattr(address, attribute):
            return kind
    if address in SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # multicast and the above aside, is_global is the rule
        return "not a public address"
    return None


# The sender ---------------------------------------------------------------------------------

class _Pinned:
    """Connects to the checked ``addresses`` in turn, never to a new DNS answer; TLS (in the
    HTTPS class) still uses the URL's host for SNI and the certificate check."""

    addresses: tuple[IPAddress, ...] = ()
    deadline: float = 0.0  # time.monotonic() after which no connection is tried
    watch: socket.socket | None = None  # a duplicate of the socket, for _Deadline to shut
    host: str
    port: int
    timeout: float
    socket_options: list | None

    def _new_conn(self) -> socket.socket:
        error: OSError | None = None
        for address in self.addresses:
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(socket.AF_INET if address.version == 4 else socket.AF_INET6,
                                 socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(min(self.timeout, left))
                sock.connect((str(address), self.port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            self.watch = sock.dup()
            if time.monotonic() < self.deadline:
                return sock
            sock.close()  # the deadline passed, perhaps before _Deadline had a socket to cut
            break
        if error is None or isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out")
        raise NewConnectionError(self, f"cannot connect to {self.host}: {error}")


class _PinnedHTTP(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, HTTPSConnection):
    pass


def _connection(target: Target, limit: float,
                ca_certs: str | None) -> _PinnedHTTP | _PinnedHTTPS:
    conn: _PinnedHTTP | _PinnedHTTPS
    if target.https:
        conn = _PinnedHTTPS(
            target.host, target.port, timeout=limit, cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or default_ca_bundle())
    else:
        conn = _PinnedHTTP(target.host, target.port, timeout=limit)
    conn.addresses = target.addresses
    conn.deadline = time.monotonic() + limit
    return conn


class _Deadline:
    """Shuts the connection's socket down once ``seconds`` have passed, so that no slow
    answer (a byte at a time within each read timeout) outlasts them; closes it at the end."""

    def __init__(self, conn: _PinnedHTTP | _PinnedHTTPS, seconds: float):
        self._conn = conn
        self._lock = threading.Lock()
        self._over = False
        self.passed = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            self._over = True
            self._conn.close()
            if self._conn.watch is not None:
                self._conn.watch.close()

    def _cut(self) -> None:
        with self._lock:
            if self._over:
                return
            self.passed = True
            if self._conn.watch is not None:  # else still connecting, within the deadline
                with contextlib.suppress(OSError):
                    self._conn.watch.shutdown(socket.SHUT_RDWR)
