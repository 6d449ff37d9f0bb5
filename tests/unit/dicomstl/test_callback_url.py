"""Which callback URLs are accepted: schemes, credentials, and every address the host has
(IP literals in every spelling, IPv6 forms that embed IPv4, names through the resolver)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from dicomstl.callback_url import CallbackURLError, check_callback_url
from dicomstl.settings import Settings

REFUSED = "callback_url must not point to a private or local address: "


def _settings(tmp_path: Path, **changes) -> Settings:
    return Settings(data_dir=tmp_path, database_url="sqlite://", redis_url=None,
                    secret_key="k", **changes)


def _refused(text: str):
    """pytest.raises for a CallbackURLError whose message contains ``text``."""
    return pytest.raises(CallbackURLError, match=re.escape(text))


def _resolver(*answers: str):
    """A resolver that answers ``answers`` for every name, and records the names asked."""
    asked: list[str] = []

    def resolve(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address(a) for a in answers]

    resolve.asked = asked
    return resolve


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
    ("http://2130706433/", "2130706433 stands for 127.0.0.1, which is a loopback address"),
    ("http://0177.0.0.1/", "0177.0.0.1 stands for 127.0.0.1, which is a loopback address"),
    ("http://0x7f.0.0.1/", "0x7f.0.0.1 stands for 127.0.0.1, which is a loopback address"),
    ("http://0x7f000001/", "0x7f000001 stands for 127.0.0.1, which is a loopback address"),
    ("http://127.1/", "127.1 stands for 127.0.0.1, which is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 stands for 127.0.0.1, which is a loopback"),
    ("http://[::ffff:7f00:1]:8080/x", "stands for 127.0.0.1, which is a loopback address"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://172.16.0.1/", "172.16.0.1 is a private address"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://[::]/", ":: is an unspecified address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]/", "ff02::1 is a multicast address"),
    ("http://255.255.255.255/", "255.255.255.255 is a reserved address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fc00::1]/", "fc00::1 is a private address"),
    ("http://[2002:7f00:1::]/", "2002:7f00:1:: embeds 127.0.0.1, a loopback address"),
    ("http://[2002:a00:1::]/", "2002:a00:1:: embeds 10.0.0.1, a private address"),
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1 embeds 127.0.0.1, a loopback address"),
    ("http://[64:ff9b::a9fe:a9fe]/", "embeds 169.254.169.254, a link-local address"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "embeds 192.0.2.45"),  # Teredo
    ("http://[2001:db8::1]/", "2001:db8::1 is a private address"),  # documentation
])
def test_internal_addresses_are_refused(tmp_path, url, why):
    resolve = _resolver("93.184.215.14")  # never asked: IP literals need no DNS
    with pytest.raises(CallbackURLError) as caught:
        check_callback_url(url, _settings(tmp_path, callback_allow_http=True), resolve)
    assert str(caught.value).startswith(REFUSED) and why in str(caught.value)
    assert resolve.asked == []
    https = url.replace("http://", "https://", 1)  # https changes nothing about the address
    with _refused("private or local"):
        check_callback_url(https, _settings(tmp_path), resolve)


def test_a_name_is_refused_when_any_of_its_addresses_is_internal(tmp_path):
    settings = _settings(tmp_path)
    local = re.escape(REFUSED) + r"localhost resolves to (127\.0\.0\.1|::1), which is a loopback"
    with pytest.raises(CallbackURLError, match=local):
        check_callback_url("https://localhost/hook", settings)  # the system resolver
    mixed = _resolver("93.184.215.14", "10.1.2.3")
    with _refused("hooks.example resolves to 10.1.2.3, which is a private address"):
        check_callback_url("https://hooks.example/x", settings, mixed)
    assert mixed.asked == ["hooks.example"]
    mapped = _resolver("::ffff:192.168.0.9")
    with _refused("resolves to 192.168.0.9, which is a private"):
        check_callback_url("https://hooks.example/x", settings, mapped)
    check_callback_url("https://hooks.example/x", settings, _resolver("93.184.215.14",
                                                                     "2606:2800:21f::1"))


def test_public_addresses_are_accepted(tmp_path):
    settings = _settings(tmp_path)
    for url in ["https://93.184.215.14/hook", "https://93.184.215.14:8443/a/b?c=d#frag",
                "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
                "https://[::ffff:93.184.215.14]/", "https://[64:ff9b::5db8:d70e]/",
                "https://[2002:5db8:d70e::1]/"]:
        check_callback_url(url, settings, _resolver())


def test_allowed_hosts_skip_the_address_check_but_not_https(tmp_path):
    settings = _settings(tmp_path, callback_allowed_hosts=" Receiver.Clinic.Internal. ,10.0.0.7")
    internal = _resolver("10.20.30.40")
    check_callback_url("https://receiver.clinic.internal/hook", settings, internal)
    check_callback_url("https://RECEIVER.clinic.internal./hook", settings, internal)
    check_callback_url("https://10.0.0.7:8443/hook", settings, internal)
    with _refused("10.0.0.8 is a private address"):
        check_callback_url("https://10.0.0.8/hook", settings, internal)
    with _refused("must use https"):
        check_callback_url("http://receiver.clinic.internal/hook", settings, internal)
    with _refused("other.internal resolves to 10.20.30.40"):
        check_callback_url("https://other.internal/hook", settings, internal)


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://93.184.215.14/hook", "callback_url must be an https URL"),
    ("file:///etc/passwd", "callback_url must be an https URL"),
    ("93.184.215.14/hook", "callback_url must be an https URL"),
    ("http://93.184.215.14/hook", "callback_url must use https"),
    ("https://user:pw@example.com/", "must not contain a user name or password"),
    ("https://user@93.184.215.14/", "must not contain a user name or password"),
    ("https://93.184.215.14\\@127.0.0.1/", "must not contain a user name or password"),
    ("https:///hook", "callback_url must name a host"),
    ("https://:443/hook", "callback_url must name a host"),
    ("https://[::1/", "callback_url is not a valid URL"),
    ("https://93.184.215.14:0/", "port must be a number from 1 to 65535"),
    ("https://93.184.215.14:99999/", "port must be a number from 1 to 65535"),
    ("https://93.184.215.14/a b", "plain ASCII without spaces"),
    ("https://93.184.215.14/\u00e9", "plain ASCII without spaces"),
    ("https://93.184.215.14/" + "a" * 2000, "at most 2000 characters"),
])
def test_malformed_urls_are_refused(tmp_path, url, message):
    with _refused(message):
        check_callback_url(url, _settings(tmp_path), _resolver("93.184.215.14"))


def test_plain_http_only_with_the_setting(tmp_path):
    check_callback_url("http://93.184.215.14/hook", _settings(tmp_path, callback_allow_http=True))
    with _refused("must be an http(s) URL"):
        check_callback_url("ftp://93.184.215.14/", _settings(tmp_path, callback_allow_http=True))


def test_an_unresolvable_host_is_refused(tmp_path):
    def nowhere(host, port):
        raise OSError("Name or service not known")

    with _refused("host hooks.example could not be found"):
        check_callback_url("https://hooks.example/x", _settings(tmp_path), nowhere)
    with _refused("host hooks.example could not be found"):
        check_callback_url("https://hooks.example/x", _settings(tmp_path), _resolver())
    with _refused("host name.invalid could not be found"):
        check_callback_url("https://name.invalid/x", _settings(tmp_path))  # system resolver
