"""Alembic environment of the registry (run through :mod:`registry.migrate`, not ``alembic.ini``).

:mod:`registry.migrate` hands over an open connection in ``config.attributes["connection"]``;
the URL in the ``sqlalchemy.url`` option is the fallback for the ``alembic`` command line.
SQLite gets batch mode (it cannot ``ALTER`` most things in place).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from registry.db import make_engine
from registry.models import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass a connection or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
