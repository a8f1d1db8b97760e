"""Database engines and sessions for SQLite (the embedded default) and PostgreSQL.

One :func:`make_engine` call per process (or per application instance); it applies what each
backend needs to behave well under a web server:

* SQLite: ``check_same_thread`` off (sessions move between worker threads), write-ahead logging so
  readers do not block the writer, a busy timeout instead of immediate "database is locked"
  errors, and foreign keys switched on (SQLite leaves them off by default). The database's parent
  directory is created when missing. Transactions are begun by SQLAlchemy rather than by the
  ``sqlite3`` module (whose implicit transactions break savepoints), and a *writing* session
  (:func:`write_session`) begins with ``BEGIN IMMEDIATE``: a transaction that reads and then
  writes would otherwise fail at once with "database is locked" when another writer committed in
  between, instead of waiting its turn.
* PostgreSQL: ``pool_pre_ping`` so a restarted database does not poison the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

__all__ = ["is_sqlite", "make_engine", "session_scope", "write_session"]

SQLITE_BUSY_TIMEOUT_MS = 15_000


def is_sqlite(url: str) -> bool:
    """Whether ``url`` points at SQLite."""
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> Engine:
    """Create an engine for ``url`` with the per-backend settings described above.

    The pool holds ``pool_size`` connections plus as many again on demand.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.database not in (None, "", ":memory:"):
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1e3,
        }
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (_sqlite_on_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_WRITE_OPTION = "edgefleet_write"


def write_session(session: Session) -> Session:
    """Mark ``session``'s next transaction as a writing one (``BEGIN IMMEDIATE`` on SQLite).

    Call it before the session's first statement; on other backends it changes nothing.
    """
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        session.connection(execution_options={_WRITE_OPTION: True})
    return session


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        if write:
            write_session(session)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
