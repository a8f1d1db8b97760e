"""Schema migrations, run programmatically (``edgefleet server migrate`` and server start-up).

The Alembic scripts live in ``registry/migrations`` and travel with the package, so an installed
server needs no ``alembic.ini``. :func:`upgrade` serialises concurrent callers on PostgreSQL with
an advisory lock (two server processes starting together do not race), and :func:`check` compares
the migrated schema with the SQLModel tables (empty when they agree).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from registry.models import metadata

__all__ = ["alembic_config", "check", "current_revision", "downgrade", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x6564_6765_666C  # "edgefl": the advisory lock id of schema migrations


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration pointing at the packaged scripts (and ``connection``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            conn.commit()
        try:
            yield conn
        finally:
            if conn.dialect.name == "postgresql":
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database up to ``revision``; return the revision it is at afterwards."""
    with _locked(engine) as conn:
        command.upgrade(alembic_config(conn), revision)
        conn.commit()
    return current_revision(engine)


def downgrade(engine: Engine, revision: str = "base") -> str | None:
    """Migrate the database down to ``revision`` (``"base"`` drops every registry table)."""
    with _locked(engine) as conn:
        command.downgrade(alembic_config(conn), revision)
        conn.commit()
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def head_revision() -> str | None:
    """The newest revision in the packaged scripts (read once per process)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def check(engine: Engine) -> list[Any]:
    """Differences between the database schema and the SQLModel tables (empty when in sync)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs: list[Any] = compare_metadata(ctx, metadata)
    return diffs
