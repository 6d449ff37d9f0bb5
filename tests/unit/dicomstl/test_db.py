"""The schema: the migrations make exactly the models' tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicomstl.db import Base, engine_for, migrate


def test_migrations_match_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    migrate(url)  # a second run is a no-op
    with engine_for(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
