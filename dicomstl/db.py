"""Database: the tables (jobs, API keys, the IP log; accounts, organisations, credits,
Stripe events, inquiries), the engine, sessions and migrations.

SQLite by default, PostgreSQL when ``DATABASE_URL`` says so. The schema is owned by the Alembic
migrations in ``dicomstl/migrations``; ``migrate`` brings a database to the newest one.
Times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.types import TypeDecorator

#: Job states, in the order a job moves through them.
STATES = ("uploaded", "queued", "running", "done", "failed", "deleted")
ENDED = ("done", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One conversion: its upload, options, progress, result and deletion deadline."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(80), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    queue: Mapped[str] = mapped_column(String(16))
    options: Mapped[dict] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    queued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    delete_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: The current run: its RQ entry is ``<id>_r<run>``; a new number only when a new run
    #: must supersede the last (a lost worker, a series choice), so a late old run is stale.
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: How many times a worker started converting this job (RQ's retries included).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Runs whose worker was lost (it died or stopped beating); at ``max_attempts`` the job
    #: fails.
    lost_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: SHA-256 of what was submitted (options, callback URL, each file's SHA-256), so an
    #: Idempotency-Key reused for a different request is refused.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    #: The job ended and its callback is not delivered yet (the scheduler queues it again
    #: if its queue entry was lost).
    callback_pending: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default="0")
    stage: Mapped[str | None] = mapped_column(String(32))
    stages_done: Mapped[list] = mapped_column(JSON, default=list)
    message: Mapped[str | None] = mapped_column(Text)
    choices: Mapped[list | None] = mapped_column(JSON)
    report: Mapped[dict | None] = mapped_column(JSON)
    upload_files: Mapped[int] = mapped_column(Integer, default=0)
    upload_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    result_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: The API key that submitted it (its webhook secret signs the callback).
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    #: Credits its organisation paid when it was accepted (0: free tier or an operator key).
    credits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The free tier's counter this job used (a keyed hash of the address and the day).
    free_quota_key: Mapped[str | None] = mapped_column(String(100))
    #: Its credits or free conversion were given back (once: it ended without a model).
    payment_returned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class ApiKey(Base):
    """A clinic's API key: only its SHA-256 is kept; the webhook secret signs callbacks.

    A key belongs to an organisation (its jobs and credits), or to no one: an operator's key
    made on the command line without ``--account``, whose jobs cost nothing.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE", name="fk_api_keys_org_id"),
        index=True)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL", name="fk_api_keys_created_by"))
    name: Mapped[str] = mapped_column(String(200))
    #: Its organisation, read with the key in one query (the API charges it on every upload).
    org: Mapped[Organisation | None] = relationship(lazy="joined")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class IpLogEntry(Base):
    """One upload, API call or login attempt: who (IP) and where (the route's pattern, never a
    URL with ids), for abuse review and rate limits. Deleted after 30 days (scheduler/)."""

    __tablename__ = "ip_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    ip: Mapped[str] = mapped_column(String(45))
    kind: Mapped[str] = mapped_column(String(16))  # upload | api | login | account
    route: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    #: The user (logged in, or the one an API key's organisation belongs to) where known.
    account_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Organisation(Base):
    """Who pays: an account's own, or a clinic's shared by its members (one level). Holds the
    credit balance (``credit_ledger`` records every change), the plan and the Stripe ids."""

    __tablename__ = "organisations"
    #: ids are never reused (SQLite's AUTOINCREMENT; PostgreSQL's sequences never are): an
    #: erased organisation's id can never name a new one
    __table_args__ = (CheckConstraint("credits >= 0", name="credits_not_negative"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")  # "" until an owner names it
    credits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    plan: Mapped[str] = mapped_column(String(16), default="free", server_default="free")
    #: The Stripe subscription's status (active, past_due, canceled, …) and period end.
    plan_status: Mapped[str | None] = mapped_column(String(32))
    plan_period_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: ``created`` (Unix s) of the newest subscription event applied: an older one arriving
    #: late changes nothing.
    plan_event_at: Mapped[int | None] = mapped_column(BigInteger)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class User(Base):
    """An account: an e-mail address and an argon2 password hash."""

    __tablename__ = "users"
    __table_args__ = ({"sqlite_autoincrement": True},)  # ids never reused (Organisation)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # lower-case
    password_hash: Mapped[str] = mapped_column(String(200))
    #: Part of every login session's identity: a new one (a password change or reset, an
    #: erasure) ends every session of the account.
    session_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user's place in an organisation: ``owner`` or ``member``; one organisation each."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"),
                                        index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Invitation(Base):
    """An invitation to join an organisation, sent by e-mail: only the token's SHA-256 is
    kept; it expires, and goes when accepted."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"),
                                        index=True)
    email: Mapped[str] = mapped_column(String(254))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class CreditEntry(Base):
    """One change of an organisation's credits: a purchase or a plan month (with its Stripe
    reference, unique, so a payment grants once), a job taking credits, a job's credits given
    back, a grant by the operator (``credits.REASONS``).

    When an account is erased its purchases stay as invoice references (the law keeps them):
    ``org_id`` and ``job_id`` cleared, ``erased_at`` set; they go after the legal window.
    """

    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    org_id: Mapped[int | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="SET NULL"), index=True)
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(16))  # see dicomstl.credits.REASONS
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stripe_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    amount_cents: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)


class StripeEvent(Base):
    """A Stripe webhook event applied (its id, once): a second delivery changes nothing."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[int] = mapped_column(BigInteger)  # Stripe's time of the event, Unix s
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class Inquiry(Base):
    """A message from the contact form; deleted after 12 months (scheduler/)."""

    __tablename__ = "inquiries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    message: Mapped[str] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                   index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web, the worker and the scheduler read while one of them writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL never corrupts the database; a power cut may lose the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _private_sqlite_file(url: str) -> None:
    """Create (or restrict) an SQLite database file owner-only: it holds webhook secrets.
    SQLite gives its -wal and -shm files the database file's mode."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    except FileNotFoundError:  # its folder is missing: SQLite will say so
        pass


@cache
def engine_for(url: str) -> Engine:
    """One engine (connection pool) per database URL and process."""
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on an exception."""
    session = sessionmaker(engine_for(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


#: The PostgreSQL advisory lock migrations hold (any fixed 64-bit number of our own).
MIGRATION_LOCK_KEY = 0x6469636F6D73746C  # "dicomstl"


def migrate(url: str) -> None:
    """Apply every Alembic migration the database lacks (a no-op when it is current)."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # before its import-time logs
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = config.attributes["engine"] = engine_for(url)
    # Processes starting together on an empty database: one migrates, the others wait for
    # it and then find nothing to do.
    if engine.dialect.name != "postgresql":
        name = make_url(url).database
        if not name or name == ":memory:" or name.startswith("file:"):
            command.upgrade(config, "head")
            return
        # a lock file beside the database, never the database itself: closing any
        # descriptor of that file would drop SQLite's own (POSIX) locks in this process
        fd = os.open(f"{name}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            command.upgrade(config, "head")
        finally:
            os.close(fd)
        return
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            command.upgrade(config, "head")
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
