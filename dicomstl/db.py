"""Database: the job, API-key and IP-log tables, the engine, sessions and migrations.

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
    DateTime,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
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


class ApiKey(Base):
    """A clinic's API key: only its SHA-256 is kept; the webhook secret signs callbacks."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
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
    kind: Mapped[str] = mapped_column(String(16))  # upload | api | login
    route: Mapped[str] = mapped_column(String(200))
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
