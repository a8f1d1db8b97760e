"""Migrations: upgrade from an empty database on SQLite and PostgreSQL, in sync with the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from registry import migrate
from registry.db import make_engine
from registry.models import metadata
from tests.registry.support import PostgresDatabases


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    dbs: PostgresDatabases = request.getfixturevalue("postgres")
    url = dbs.create("mig_")
    yield url
    dbs.drop(url)


def test_upgrade_from_empty_matches_models_and_downgrades(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) is None
        assert migrate.upgrade(engine) == migrate.head_revision()
        tables = set(sa.inspect(engine).get_table_names())
        assert {t.name for t in metadata.sorted_tables} <= tables
        assert migrate.check(engine) == []  # the migrated schema is exactly the models'
        assert migrate.upgrade(engine) == migrate.head_revision()  # idempotent
        assert migrate.downgrade(engine, "base") is None
        assert not (
            {t.name for t in metadata.sorted_tables} & set(sa.inspect(engine).get_table_names())
        )
        assert migrate.upgrade(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_head_is_a_single_linear_revision() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1


def test_unreachable_postgres_fails_with_a_clear_message() -> None:
    dbs = PostgresDatabases("postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    message = r"(?s)PostgreSQL is unreachable.*SKIP_POSTGRES"
    with pytest.raises(pytest.fail.Exception, match=message):
        dbs.check()
