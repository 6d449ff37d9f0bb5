"""Alembic environment: runs the migrations on the engine that ``dicomstl.db.migrate`` passes."""

from alembic import context

from dicomstl.db import Base, engine_for

config = context.config
engine = config.attributes.get("engine") or engine_for(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
