"""deploy/nginx/dicomstl.conf: its limits are the app's, and Stripe's webhook passes through
byte for byte (the app verifies the Stripe-Signature over the exact body) with the app's
answers unchanged (Stripe retries every answer that is not 2xx).

The live test runs a real nginx (the binary ``DICOMSTL_TEST_NGINX`` names, which ``make
test`` unpacks from Debian's package, or ``nginx`` on PATH) on the file, moved to loopback
ports, in front of a stand-in for the web app; without nginx it is skipped, and fails under
CI (``require_tool``; the file's other checks need none).
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import ClassVar

import pytest

from dicomstl.settings import Settings
from tests.conftest import require_tool
from tests.deploy.contract import DEPLOY, served_routes
from tests.service.helpers import free_port

CONF = DEPLOY / "nginx" / "dicomstl.conf"
WEBHOOK = "/billing/webhook"
#: Directives that would change a request body or hide the app's answers from Stripe.
ALTERING = ("proxy_set_body", "proxy_pass_request_body off", "proxy_intercept_errors on",
            "proxy_pass_request_headers off", "error_page")


def _text() -> str:
    return "\n".join(line.split("#", 1)[0] for line in CONF.read_text().splitlines())


def _block(text: str, head: str) -> str:
    """The body of the block that opens with ``head {`` (nested braces included)."""
    start = text.index(head)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"{head}: not closed")


def _size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_the_webhook_goes_to_the_web_app_unaltered(tmp_path):
    text = _text()
    webhook = _block(text, f"location = {WEBHOOK}")
    everything = _block(text, "location / ")
    assert WEBHOOK in served_routes(tmp_path)
    pass_to = re.findall(r"proxy_pass\s+([^;]+);", webhook)
    assert pass_to == re.findall(r"proxy_pass\s+([^;]+);", everything) == ["http://dicomstl_web"]
    for directive in ALTERING:
        assert directive not in " ".join(text.split()), directive
    # the headers the app needs are set once, for both locations (a location that set any
    # proxy_set_header of its own would lose these)
    assert "proxy_set_header" not in webhook and "proxy_set_header" not in everything
    assert _size(re.search(r"client_max_body_size\s+(\w+);", webhook)[1]) >= 1024**2


def test_the_limits_are_the_apps():
    text = _text()
    outside_the_webhook = text.replace(_block(text, f"location = {WEBHOOK}"), "")
    (limit,) = re.findall(r"client_max_body_size\s+(\w+);", outside_the_webhook)
    assert _size(limit) == Settings.max_upload_bytes
    upstream = _block(text, "upstream dicomstl_web")
    assert re.search(r"server\s+127\.0\.0\.1:(\d+);", upstream)[1] == str(Settings.port)


# --- a real nginx ------------------------------------------------------------------------------

class _StandIn(http.server.BaseHTTPRequestHandler):
    """The web app's place: records what arrives, answers with ``status`` and a JSON body."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, dict, bytes]]] = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, dict(self.headers), body))
        answer = b'{"error": "payments are off"}' if self.status >= 400 else b'{"received": true}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(tmp_path):
    """nginx on the file (loopback ports, a throwaway certificate) in front of _StandIn; the
    https port and the stand-in's server."""
    nginx = require_tool(os.environ.get("DICOMSTL_TEST_NGINX") or "nginx")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
                    "-subj", "/CN=dicomstl.example.org"], check=True, capture_output=True)
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    https, plain = free_port(), free_port()
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    old = tuple(int(x) for x in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version).groups()) < (
        1, 25, 1)
    site = CONF.read_text()
    site = re.sub(r"^\s*listen \[::\].*$", "", site, flags=re.M)
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{plain};")
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{app.server_port};")
    site = re.sub(r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(tmp_path / "cert.pem"),
                  site)
    site = re.sub(r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(tmp_path / "key.pem"), site)
    if old:  # "http2 on" is nginx 1.25.1's; older ones say it on the listen line
        site = re.sub(r"^\s*http2 on;.*$", "", site, flags=re.M)
    (tmp_path / "site.conf").write_text(site)
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (tmp_path / "nginx.conf").write_text(
        ("user root;\n" if os.getuid() == 0 else "") +
        f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\n"
        "events {}\nhttp {\n  access_log off;\n"
        f"  client_body_temp_path {temp['body']}; proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']}; uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n  include {tmp_path / 'site.conf'};\n}}\n")
    command = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    server = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", https), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        _StandIn.seen.clear()
        _StandIn.status = 200
        yield https, app
    finally:
        server.terminate()
        server.wait(10)
        app.shutdown()
        app.server_close()


def _post(port: int, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_nginx_passes_the_webhook_through_byte_for_byte(proxy):
    port, _app = proxy
    # JSON with what a careless proxy or framework might touch: CRLF, tabs, trailing
    # spaces, escapes, raw UTF-8, no final newline; and the size of a large event
    body = ('{\r\n\t"id": "evt_1", "type": "invoice.paid",  \n "data": {"object": '
            '{"description": "Zürich \\u00e9  ", "lines": "' + "x" * 300_000 + '"}}}'
            ).encode()
    headers = {"Stripe-Signature": "t=1700000000,v1=" + "ab" * 32,
               "Content-Type": "application/json; charset=utf-8",
               "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    status, answer = _post(port, WEBHOOK, body, headers)
    assert status == 200 and answer == b'{"received": true}'
    ((path, seen_headers, seen_body),) = _StandIn.seen
    assert path == WEBHOOK and seen_body == body
    assert seen_headers["Stripe-Signature"] == headers["Stripe-Signature"]
    assert seen_headers["Content-Type"] == headers["Content-Type"]
    assert seen_headers["X-Forwarded-Proto"] == "https"
    assert seen_headers["X-Forwarded-For"].split(",")[-1].strip() == "127.0.0.1"


@pytest.mark.parametrize("status", [400, 409, 503])
def test_nginx_hands_the_apps_refusals_to_stripe_unchanged(proxy, status):
    port, _app = proxy
    _StandIn.status = status
    code, answer = _post(port, WEBHOOK, b"{}", {"Content-Type": "application/json"})
    assert code == status and answer == b'{"error": "payments are off"}'
    assert len(_StandIn.seen) == 1  # delivered once, not retried by nginx


def test_nginx_answers_a_5xx_stripe_retries_while_the_app_is_down(proxy):
    port, app = proxy
    app.shutdown()
    app.server_close()
    code, _ = _post(port, WEBHOOK, b"{}", {"Content-Type": "application/json"})
    assert code in (502, 504)


def test_nginx_refuses_an_oversized_webhook_unread(proxy):
    port, _app = proxy
    code, _ = _post(port, WEBHOOK, b"x" * (1024**2 + 1), {"Content-Type": "application/json"})
    assert code == 413 and not _StandIn.seen
