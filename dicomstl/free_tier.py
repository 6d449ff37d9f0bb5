"""The free tier: a few conversions a day per client address, without an account or credits.

A visitor may convert ``free_conversions_per_day`` uploads of up to ``free_upload_bytes`` per
UTC day from one address. The count is a Redis counter per day and address, named by a keyed
hash of the address (the address itself is not stored) and expiring two days later. Taking
one is atomic (INCR, and DECR back when over the limit), so concurrent uploads never pass
the limit; a job that ends without a model gives its conversion back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from redis.exceptions import RedisError

from dicomstl import queue as q
from dicomstl.db import utcnow
from dicomstl.queue import QueueUnavailable
from dicomstl.settings import Settings

KEY_PREFIX = "dicomstl:free:"
KEEP_S = 2 * 86400


class FreeTierRefused(Exception):
    """The free tier does not cover this upload (the message says why and what to do)."""


def size_allowed(settings: Settings, upload_bytes: int) -> bool:
    return upload_bytes <= settings.free_upload_bytes


def _key(settings: Settings, ip: str, day: dt.date) -> str:
    mac = hmac.new(settings.secret_key.encode(), f"free-tier:{ip}".encode(), hashlib.sha256)
    return f"{KEY_PREFIX}{day:%Y%m%d}:{mac.hexdigest()[:32]}"


def size_words(n: int) -> str:
    """A size for people: ``268435456`` -> "256 MB", ``10000`` -> "9.8 kB" (binary units)."""
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _too_large(settings: Settings) -> FreeTierRefused:
    return FreeTierRefused(f"the free tier converts uploads up to "
                           f"{size_words(settings.free_upload_bytes)}; this one is larger "
                           "and needs credits (log in and buy some)")


def _used_up(settings: Settings) -> FreeTierRefused:
    return FreeTierRefused(f"the free tier's {settings.free_conversions_per_day} conversions "
                           "for today (UTC) from this address are used; log in and buy "
                           "credits to convert more")


def check(settings: Settings, ip: str, upload_bytes: int,
          now: dt.datetime | None = None) -> None:
    """FreeTierRefused when the free tier cannot cover an upload (too large, or today's
    conversions are used), taking nothing; a look before the body arrives."""
    if not size_allowed(settings, upload_bytes):
        raise _too_large(settings)
    if left(settings, ip, now) == 0:
        raise _used_up(settings)


def take(settings: Settings, ip: str, upload_bytes: int,
         now: dt.datetime | None = None) -> str:
    """Take one free conversion for ``ip`` today; the counter's key (the job keeps it to give
    the conversion back). FreeTierRefused when the upload is too large or today's are used;
    QueueUnavailable when Redis cannot be reached."""
    if not size_allowed(settings, upload_bytes):
        raise _too_large(settings)
    key = _key(settings, ip, (now or utcnow()).date())
    try:
        connection = q.connect(settings.redis_url)
        with connection.pipeline() as pipe:
            count, _ = pipe.incr(key).expire(key, KEEP_S).execute()
        if count > settings.free_conversions_per_day:
            connection.decr(key)
            raise _used_up(settings)
    except RedisError as exc:
        raise QueueUnavailable(str(exc)) from None
    return key


def left(settings: Settings, ip: str, now: dt.datetime | None = None) -> int | None:
    """Free conversions left today for ``ip``; None when Redis cannot be asked."""
    try:
        used = q.connect(settings.redis_url).get(_key(settings, ip, (now or utcnow()).date()))
    except RedisError:
        return None
    return max(0, settings.free_conversions_per_day - int(used or 0))


def give_back(settings: Settings, key: str) -> None:
    """Return a conversion taken with ``take`` (a job that made no model). A lost give-back
    (Redis away) costs the visitor one free conversion, nothing more."""
    try:
        connection = q.connect(settings.redis_url)
        if int(connection.get(key) or 0) > 0:
            connection.decr(key)
    except RedisError:
        pass
