"""The inference log's storage: idempotent batch inserts, listing, feedback, batched pruning.

Functions take a connection or session and leave the commit to the caller, except
:func:`prune`, which commits after every batch so that no single transaction holds the write
lock for long. :func:`latency_bucket` maps a latency onto the log-scale buckets (2 % wide) from
which the monitoring query computes quantiles in the database.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col, select

from registry import rollups
from registry.models.columns import utcnow
from registry.models.evidence import FeedbackItem, FeedbackResult, InferenceRecord

__all__ = [
    "BUCKET_BASE_MS",
    "BUCKET_GROWTH",
    "InferenceFilter",
    "apply_feedback",
    "bucket_upper_ms",
    "insert_records",
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
    """Insert ``rows`` (column → value), skipping any ``(request_id, row_index)`` already stored
    (or repeated within ``rows``: the first is kept), and count the rows stored into the rollups
    (:mod:`registry.rollups`) in the same transaction.

    Which rows are new is read before the insert (one indexed ``SELECT`` per 500 request ids,
    which finds nothing in the common case), so the insert returns nothing: on SQLite one
    multi-row statement per batch (one step), on PostgreSQL one pipelined ``executemany``.
    ``ON CONFLICT DO NOTHING`` still guards the unique key: a row
    a concurrent transaction stores between the read and the insert is stored once (and then
    counted by both; the writer of :mod:`server.evidence.writer` retries its own batches
    sequentially, so this needs two writers logging one client-chosen request id at once).
    """
    fresh = _new_rows(conn, rows)
    if not fresh:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # psycopg's executemany pipelines the rows (no round trip each, nothing returned)
        stmt = postgresql.insert(TABLE).on_conflict_do_nothing(
            index_elements=["request_id", "row_index"])
        columns = _columns(fresh)
        same = all(len(r) == len(columns) for r in fresh)
        conn.execute(stmt, fresh if same else [{k: r.get(k) for k in columns} for r in fresh])
    elif dialect == "sqlite":
        _insert_sqlite(conn, fresh)
    else:  # pragma: no cover - the registry runs on SQLite and PostgreSQL only
        raise NotImplementedError(f"no idempotent insert for {dialect}")
    rollups.add_records(conn, fresh)


def _insert_sqlite(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """``rows`` as multi-row ``INSERT``s of up to ``_MAX_PARAMS`` values: one SQLite step per
    statement (``executemany`` steps, and so releases and retakes the GIL, once per row)."""
    columns = _columns(rows)
    binds = _bind_processors(conn.dialect, columns)
    per = max(1, _MAX_PARAMS // len(columns))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        params = [
            v if proc is None else proc(v)
            for r in chunk
            for v, proc in zip([r.get(k) for k in columns], binds, strict=True)
        ]
        conn.exec_driver_sql(_insert_sql(conn.dialect, columns, len(chunk)), tuple(params))


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Every column some row of ``rows`` names (the ones a row leaves out are stored NULL)."""
    columns = tuple(rows[0])
    if any(tuple(r) != columns for r in rows):
        columns = tuple({k: None for r in rows for k in r})
    return columns


def _bind_processors(dialect: sa.Dialect, columns: tuple[str, ...]) -> list[Any]:
    """The driver-value conversion of each of ``columns`` (``None`` where there is none), as
    SQLAlchemy applies it to a bound parameter of that column."""
    return [TABLE.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in columns]


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect: sa.Dialect, columns: tuple[str, ...], n: int) -> str:
    """``INSERT … VALUES (…), … ON CONFLICT (request_id, row_index) DO NOTHING`` for ``n`` rows
    of ``columns``, with SQLite's ``?`` placeholders (one statement, one step)."""
    quote = dialect.identifier_preparer.quote
    one = "(" + ", ".join(["?"] * len(columns)) + ")"
    return (
        f"INSERT INTO {quote(TABLE.name)} ({', '.join(quote(k) for k in columns)}) VALUES "
        + ", ".join([one] * n)
        + f" ON CONFLICT ({quote('request_id')}, {quote('row_index')}) DO NOTHING"
    )


def _new_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``rows`` whose key is neither stored nor repeated earlier in ``rows``."""
    if not rows:
        return []
    c = TABLE.c
    ids = sorted({r["request_id"] for r in rows})
    seen: set[tuple[str, int]] = set()
    for start in range(0, len(ids), _READ_CHUNK):
        seen.update(
            (r[0], r[1]) for r in conn.execute(
                sa.select(c.request_id, c.row_index).where(
                    c.request_id.in_(ids[start : start + _READ_CHUNK]))
            )
        )
    fresh = []
    for r in rows:
        key = (r["request_id"], r["row_index"])
        if key not in seen:
            seen.add(key)
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
