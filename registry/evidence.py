"""The inference log's storage: idempotent batch inserts, listing, feedback, batched pruning.

Functions take a connection or session and leave the commit to the caller, except
:func:`prune`, which commits after every batch so that no single transaction holds the write
lock for long. :func:`latency_bucket` maps a latency onto the log-scale buckets (2 % wide) from
which the monitoring query computes quantiles in the database.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlmodel import Session, col, select

from registry import rollups
from registry.models.columns import UTCDateTime, utcnow
from registry.models.evidence import FeedbackItem, FeedbackResult, InferenceRecord

__all__ = [
    "BUCKET_BASE_MS",
    "BUCKET_GROWTH",
    "InferenceFilter",
    "apply_feedback",
    "bucket_upper_ms",
    "driver_times",
    "insert_records",
    "insert_rows",
    "latency_bucket",
    "list_records",
    "prune",
]

#: Lower edge of bucket 0 (milliseconds); latencies below it fall into bucket 0.
BUCKET_BASE_MS = 0.001
#: Ratio between consecutive bucket edges (each bucket is 2 % wide).
BUCKET_GROWTH = 1.02
_LOG_GROWTH = math.log(BUCKET_GROWTH)
_MAX_BUCKET = 2000  # about 40 s at the top: anything slower shares the last bucket

TABLE = InferenceRecord.__table__  # type: ignore[attr-defined]
_READ_CHUNK = 500  # request ids per existence read
_MAX_PARAMS = 30_000  # bound parameters per insert (SQLite allows 32,766)


def latency_bucket(latency_ms: float) -> int:
    """The bucket ``b`` with ``BASE·GROWTH^b <= latency_ms < BASE·GROWTH^(b+1)`` (clamped)."""
    if not latency_ms > BUCKET_BASE_MS:
        return 0
    return min(_MAX_BUCKET, int(math.log(latency_ms / BUCKET_BASE_MS) / _LOG_GROWTH))


def bucket_upper_ms(bucket: int) -> float:
    """The upper edge of ``bucket`` (what a quantile falling into it reports), in ms."""
    return float(BUCKET_BASE_MS * BUCKET_GROWTH ** (bucket + 1))


def insert_records(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (column → value; a column a row leaves out is stored NULL): what
    :func:`insert_rows` does, for rows given as dicts."""
    if not rows:
        return
    columns = _columns(list(rows))
    insert_rows(conn, columns, [tuple([r.get(k) for k in columns]) for r in rows])


def insert_rows(conn: Connection, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
                ) -> None:
    """Insert ``rows`` (tuples of the values of ``columns``, which name ``request_id`` and
    ``row_index``), skipping any ``(request_id, row_index)`` already stored (or repeated within
    ``rows``: the first is kept), and count the rows stored into the rollups
    (:mod:`registry.rollups`) in the same transaction.

    The common case reads nothing: the batch is inserted (``ON CONFLICT DO NOTHING``) inside a
    savepoint, and when the database reports every row inserted, every row is counted. When it
    reports fewer (a retried batch, a key repeated within it, or a row a concurrent transaction
    stored), the savepoint is rolled back, the rows already stored are read (one indexed
    ``SELECT`` per 500 request ids) and the others inserted the same way; so a row is counted
    only by the transaction that stored it. On SQLite the insert is one multi-row statement per
    chunk (one step: ``executemany`` steps, and so releases and retakes the GIL, once per row),
    on PostgreSQL one pipelined ``executemany`` of plain tuples.
    """
    columns = tuple(columns)
    todo = list(rows)
    for attempt in range(_ATTEMPTS):
        if not todo:
            return
        with conn.begin_nested() as savepoint:
            if _insert(conn, columns, _bound(conn.dialect, columns, todo)) == len(todo):
                rollups.add_rows(conn, columns, todo)
                return
            savepoint.rollback()
        if attempt + 1 < _ATTEMPTS:
            todo = _new_rows(conn, columns, rows)
    raise ConcurrentInsertError(
        f"{len(todo)} inference records: other transactions kept storing some of them")


class ConcurrentInsertError(sa.exc.SQLAlchemyError):
    """:func:`insert_rows` found rows stored by other transactions on every attempt (the
    caller's transaction may be retried: nothing of the batch was stored)."""


_ATTEMPTS = 4  # inserts tried by insert_rows: the batch, then what is not yet stored


def _insert(conn: Connection, columns: tuple[str, ...], params: list[tuple[Any, ...]]) -> int:
    """Insert the driver values ``params`` (``ON CONFLICT DO NOTHING``); the rows inserted."""
    dialect = conn.dialect
    if dialect.name == "postgresql":
        # psycopg's executemany pipelines the rows (no round trip each, nothing returned)
        return int(conn.exec_driver_sql(_insert_sql(dialect, columns, 1), params).rowcount)
    if dialect.name != "sqlite":  # pragma: no cover - the registry runs on SQLite, PostgreSQL
        raise NotImplementedError(f"no idempotent insert for {dialect.name}")
    per = max(1, _MAX_PARAMS // len(columns))
    inserted = 0
    for start in range(0, len(params), per):
        chunk = params[start : start + per]
        inserted += conn.exec_driver_sql(_insert_sql(dialect, columns, len(chunk)),
                                         tuple(itertools.chain.from_iterable(chunk))).rowcount
    return inserted


def _bound(dialect: sa.Dialect, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
           ) -> list[tuple[Any, ...]]:
    """``rows`` with each value converted as SQLAlchemy binds a parameter of its column (only
    the columns that have a conversion are touched, a column at a time: a timestamp column
    through :func:`driver_times`)."""
    converted = [(i, proc) for i, proc in enumerate(_bind_processors(dialect, columns))
                 if proc is not None]
    if not converted:
        return list(rows)
    values = list(zip(*rows, strict=True))
    for i, proc in converted:
        if isinstance(TABLE.c[columns[i]].type, UTCDateTime):
            values[i] = tuple(driver_times(dialect, values[i], proc))
        else:
            values[i] = tuple([None if v is None else proc(v) for v in values[i]])
    return list(zip(*values, strict=True))


def driver_times(dialect: sa.Dialect, values: Sequence[datetime | None], proc: Any
                 ) -> list[Any]:
    """What ``proc``, the bind processor of a :class:`~registry.models.columns.UTCDateTime`
    column on ``dialect``, makes of each of ``values``, without its per-value Python calls when
    every value is a UTC time: on SQLite the naive text SQLAlchemy stores
    (``YYYY-MM-DD HH:MM:SS.ffffff``), elsewhere the values themselves. The first value is
    checked against ``proc``; anything else (a naive time, which ``proc`` refuses, another
    time zone, ``None``) goes through ``proc``."""
    if not values or any(v is None or v.tzinfo is not UTC for v in values):
        return [None if v is None else proc(v) for v in values]
    if dialect.name == "sqlite":
        out: list[Any] = list(map(_ISO_TEXT, map(_ISO, values)))
    else:
        out = list(values)
    return out if out[0] == proc(values[0]) else [proc(v) for v in values]


_ISO = operator.methodcaller("isoformat", " ", "microseconds")
_ISO_TEXT = operator.itemgetter(slice(0, 26))  # without the "+00:00" of a UTC time


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Every column some row of ``rows`` names (the ones a row leaves out are stored NULL)."""
    columns = tuple(rows[0])
    if any(tuple(r) != columns for r in rows):
        columns = tuple({k: None for r in rows for k in r})
    return columns


@functools.lru_cache(maxsize=64)
def _bind_processors(dialect: sa.Dialect, columns: tuple[str, ...]) -> list[Any]:
    """The driver-value conversion of each of ``columns`` (``None`` where there is none), as
    SQLAlchemy applies it to a bound parameter of that column."""
    return [TABLE.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in columns]


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect: sa.Dialect, columns: tuple[str, ...], n: int) -> str:
    """``INSERT … VALUES (…), … ON CONFLICT (request_id, row_index) DO NOTHING`` for ``n`` rows
    of ``columns``, with the driver's positional placeholders (``?`` or ``%s``)."""
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    return (
        f"INSERT INTO {quote(TABLE.name)} ({', '.join(quote(k) for k in columns)}) VALUES "
        + ", ".join([one] * n)
        + f" ON CONFLICT ({quote('request_id')}, {quote('row_index')}) DO NOTHING"
    )


@functools.lru_cache(maxsize=64)
def _stored_sql(dialect: sa.Dialect, n: int) -> str:
    """``SELECT request_id, row_index … WHERE request_id IN (…)`` for ``n`` ids (driver SQL: no
    per-value coercion of a SQLAlchemy ``IN``)."""
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    return (f"SELECT {quote('request_id')}, {quote('row_index')} FROM {quote(TABLE.name)} "
            f"WHERE {quote('request_id')} IN ({', '.join([mark] * n)})")


def _new_rows(conn: Connection, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
              ) -> list[tuple[Any, ...]]:
    """The rows of ``rows`` whose key is neither stored nor repeated earlier in ``rows``."""
    if not rows:
        return []
    key = operator.itemgetter(columns.index("request_id"), columns.index("row_index"))
    keys = [key(r) for r in rows]
    ids = sorted({k[0] for k in keys})
    seen: set[tuple[str, int]] = set()
    for start in range(0, len(ids), _READ_CHUNK):
        chunk = ids[start : start + _READ_CHUNK]
        seen.update((r[0], r[1]) for r in conn.exec_driver_sql(
            _stored_sql(conn.dialect, len(chunk)), tuple(chunk)))
    if not seen and len(set(keys)) == len(keys):
        return list(rows)  # the common case: nothing stored, nothing repeated
    fresh = []
    for k, r in zip(keys, rows, strict=True):
        if k not in seen:
            seen.add(k)
            fresh.append(r)
    return fresh


def prune(engine: Engine, before: datetime, *, batch: int = 5000, max_batches: int = 1000) -> int:
    """Delete records created before ``before``, ``batch`` rows per transaction; the count."""
    deleted = 0
    for _ in range(max_batches):
        ids = (
            sa.select(TABLE.c.id)
            .where(TABLE.c.created_at < before)
            .order_by(TABLE.c.id)
            .limit(batch)
            .scalar_subquery()
        )
        with engine.begin() as conn:
            n = conn.execute(sa.delete(TABLE).where(TABLE.c.id.in_(ids))).rowcount
        deleted += n
        if n < batch:
            break
    return deleted


@dataclass(frozen=True)
class InferenceFilter:
    """Filters of :func:`list_records` (``None`` matches everything)."""

    model: str | None = None
    version: int | None = None
    alias: str | None = None
    variant: str | None = None
    caller: str | None = None
    status: int | None = None
    errors_only: bool = False
    request_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    labelled: bool | None = None


def _where(stmt: Any, f: InferenceFilter) -> Any:
    c = TABLE.c
    for column, value in (
        (c.model, f.model), (c.version, f.version), (c.alias, f.alias), (c.variant, f.variant),
        (c.caller, f.caller), (c.status, f.status), (c.request_id, f.request_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if f.errors_only:
        stmt = stmt.where(c.status >= 400)
    if f.since is not None:
        stmt = stmt.where(c.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(c.created_at < f.until)
    if f.labelled is not None:
        stmt = stmt.where(c.true_label.is_not(None) if f.labelled else c.true_label.is_(None))
    return stmt


def list_records(
    session: Session, f: InferenceFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[InferenceRecord], int]:
    """One page of records matching ``f``, newest first, and the total that match."""
    total = session.execute(_where(sa.select(sa.func.count()).select_from(TABLE), f)).scalar_one()
    stmt = _where(select(InferenceRecord), f).order_by(
        sa.desc(col(InferenceRecord.created_at)), sa.desc(col(InferenceRecord.id))
    )
    rows = list(session.exec(stmt.limit(limit).offset(offset)).all())
    return rows, int(total)


def apply_feedback(
    session: Session, items: Sequence[FeedbackItem], labelled_at: datetime | None = None
) -> FeedbackResult:
    """Store true labels on their records (idempotent: the same label again changes nothing).

    A different label for an instance already labelled replaces it (a correction). Items that
    name no logged, answered instance come back in ``unknown``; nothing is stored for them.
    The records are read ``FOR UPDATE`` (on PostgreSQL), so concurrent feedback on one instance
    moves the rollups (:mod:`registry.rollups`) once.
    """
    when = labelled_at or utcnow()
    wanted = {(i.request_id, i.row_index): i for i in items}
    c = TABLE.c
    found: dict[tuple[str, int], dict[str, Any]] = {}
    ids = sorted({i.request_id for i in items})
    for start in range(0, len(ids), 500):
        rows = session.execute(
            sa.select(c.id, c.request_id, c.row_index, c.true_label, c.model, c.version,
                      c.variant, c.created_at, c.label).where(
                c.request_id.in_(ids[start : start + 500]), c.status < 400
            ).with_for_update()
        ).all()
        for r in rows:
            found[(r.request_id, r.row_index)] = dict(r._mapping)
    applied = unchanged = 0
    unknown = []
    changes: list[tuple[dict[str, Any], str | None, str]] = []
    for key, item in wanted.items():
        hit = found.get(key)
        if hit is None:
            unknown.append(item)
        elif hit["true_label"] == item.label:
            unchanged += 1
        else:
            session.execute(
                sa.update(TABLE).where(c.id == hit["id"]).values(true_label=item.label,
                                                                 labelled_at=when)
            )
            changes.append((hit, hit["true_label"], item.label))
            applied += 1
    rollups.add_feedback(session.connection(), changes)
    session.flush()
    return FeedbackResult(applied=applied, unchanged=unchanged, unknown=unknown)
