"""Several processes migrating one empty database at once (pods starting together)."""

import subprocess
import sys

from sqlalchemy import inspect

from dicomstl.db import engine_for
from tests.conftest import ROOT

MIGRATE = "import sys; from dicomstl.db import migrate; migrate(sys.argv[1])"


def test_processes_migrating_at_once_leave_one_schema_and_all_succeed(database_url):
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, database_url], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    tables = set(inspect(engine_for(database_url)).get_table_names())
    assert {"jobs", "api_keys", "ip_log", "alembic_version"} <= tables


def _alembic(url: str):
    from pathlib import Path

    from alembic.config import Config

    import dicomstl.db

    config = Config()
    config.set_main_option("script_location",
                           str(Path(dicomstl.db.__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["engine"] = engine_for(url)
    return config


def test_the_migrations_make_exactly_the_models_tables(database_url):
    """Every table, column, index and constraint of ``dicomstl.db`` comes from a migration:
    Alembic's comparison of the migrated database with the models finds nothing."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dicomstl.db import Base, migrate

    migrate(database_url)
    with engine_for(database_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_the_accounts_migration_keeps_existing_jobs_and_keys_and_goes_back(database_url):
    from alembic import command
    from sqlalchemy import text

    config = _alembic(database_url)
    command.upgrade(config, "0003")
    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO api_keys (id, name, prefix, key_hash, webhook_secret, created_at) "
            "VALUES (7, 'clinic', 'abcd1234', 'h', 'whsec_x', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO jobs (id, owner, state, queue, options, created_at, delete_after, "
            "attempts, stages_done, upload_files, upload_bytes, run, lost_runs, "
            "callback_pending) VALUES ('job-of-a-key-0000000', 'key:7', 'done', 'bulk', "
            "'{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1, '[]', 1, 10, 1, 0, false)"))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT api_key_id, credits, payment_returned FROM jobs")
                            ).one() == (7, 0, False)
        assert conn.execute(text("SELECT org_id FROM api_keys")).scalar() is None
    command.downgrade(config, "0003")  # and back again, keeping them
    with engine.connect() as conn:
        assert conn.execute(text("SELECT owner FROM jobs")).scalar() == "key:7"
        assert "users" not in inspect(engine).get_table_names()
    command.upgrade(config, "head")
    assert {"users", "organisations", "memberships", "invitations", "credit_ledger",
            "stripe_events", "inquiries"} <= set(inspect(engine).get_table_names())
