"""Rollups of the inference log: per model, version, variant and minute, kept in step with it.

Per model, version and variant, they hold

* in ``inference_rollup``, per hour (``LATENCY_ROLLUP_S``) of ``created_at``: requests (records
  with ``row_index`` 0) and errors (status >= 400) per latency bucket — request counts, error
  rates and nearest-rank quantiles;
* in ``prediction_rollup``, per minute (``ROLLUP_BUCKET_S``): answered instances per predicted
  label, and how many of them carry a true label and how many of those are right — the
  prediction distribution and accuracy per window.

They change only by increments computed from rows actually stored: :func:`add_rows` is called
by :func:`registry.evidence.insert_rows` with the rows its idempotent insert stores (a
batch written twice adds once), :func:`add_feedback` by :func:`registry.evidence.apply_feedback`
with the labels it changed, both inside the caller's transaction; the upsert
(``ON CONFLICT … DO UPDATE SET n = n + excluded.n``) is safe under concurrent writers.
:func:`prune` deletes whole buckets before a bucket-aligned cutoff (the inference log prunes its
records at the same cutoff, aligned to the hour, so rollups and records describe the same
rows). :func:`rebuild`
recomputes every rollup of a model from its records (the migration that adds the tables uses it
for records logged before).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from registry.models.evidence import (
    LATENCY_ROLLUP_S,
    ROLLUP_BUCKET_S,
    InferenceRecord,
    InferenceRollup,
    PredictionRollup,
)

__all__ = [
    "INFERENCE_ROLLUP",
    "LATENCY_ROLLUP_S",
    "PREDICTION_ROLLUP",
    "add_feedback",
    "add_records",
    "add_rows",
    "bucket_ceil",
    "bucket_floor",
    "prune",
    "rebuild",
]

INFERENCE_ROLLUP = InferenceRollup.__table__  # type: ignore[attr-defined]
PREDICTION_ROLLUP = PredictionRollup.__table__  # type: ignore[attr-defined]
_RECORDS = InferenceRecord.__table__  # type: ignore[attr-defined]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

InfKey = tuple[str, datetime, int, str, int]  # model, bucket, version, variant, latency bucket
PredKey = tuple[str, datetime, int, str, str]  # model, bucket, version, variant, label


def bucket_floor(at: datetime, width: int = ROLLUP_BUCKET_S) -> datetime:
    """The start of the ``width``-second bucket holding ``at`` (UTC)."""
    seconds = int((at.astimezone(UTC) - _EPOCH).total_seconds() // width)
    return _EPOCH + timedelta(seconds=seconds * width)


def bucket_ceil(at: datetime, width: int = ROLLUP_BUCKET_S) -> datetime:
    """The first ``width``-second bucket boundary at or after ``at``."""
    floor = bucket_floor(at, width)
    return floor if floor == at else floor + timedelta(seconds=width)


def _upsert(conn: Connection, table: Any, keys: list[str], values: list[dict[str, Any]],
            counters: list[str]) -> None:
    if not values:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - the registry runs on SQLite and PostgreSQL only
        raise NotImplementedError(f"no upsert for {dialect}")
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c: table.c[c] + stmt.excluded[c] for c in counters},
    )
    # sorted: concurrent writers take the rows' locks in the same order (no deadlock)
    conn.execute(stmt, sorted(values, key=lambda v: tuple(v[k] for k in keys)))


def _write(conn: Connection, inf: dict[InfKey, list[int]],
           pred: dict[PredKey, list[int]]) -> None:
    inf_keys = ["model", "bucket_start", "version", "variant", "latency_bucket"]
    pred_keys = ["model", "bucket_start", "version", "variant", "label"]
    _upsert(conn, INFERENCE_ROLLUP, inf_keys,
            [dict(zip(inf_keys, k, strict=True), requests=v[0], errors=v[1])
             for k, v in inf.items() if v[0] or v[1]],
            ["requests", "errors"])
    _upsert(conn, PREDICTION_ROLLUP, pred_keys,
            [dict(zip(pred_keys, k, strict=True), answered=v[0], labelled=v[1], correct=v[2])
             for k, v in pred.items() if any(v)],
            ["answered", "labelled", "correct"])


#: The columns :func:`add_rows` reads (``true_label`` too when it is given).
_ROW_COLUMNS = ("model", "version", "variant", "row_index", "created_at", "status",
                "latency_bucket", "label")


def add_records(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Count newly stored records (column → value dicts) into their buckets: what
    :func:`add_rows` does, for rows given as dicts."""
    columns = (*_ROW_COLUMNS, "true_label")
    add_rows(conn, columns, [tuple([r.get(k) for k in columns]) for r in rows])


def add_rows(conn: Connection, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Count newly stored records (tuples of the values of ``columns``) into their buckets:
    the batch is counted per distinct bucket key first (one :class:`~collections.Counter`
    per table), then each table gets one upsert of its touched buckets."""
    ix = {k: i for i, k in enumerate(columns)}
    m, v, var, ri, ca, st, lb, lab = (ix[k] for k in _ROW_COLUMNS)
    tl = ix.get("true_label")
    seconds = [_epoch_seconds(r[ca]) for r in rows]
    # per request (row 0): (model, hour, version, variant, latency bucket, failed)
    requests = Counter(
        (r[m], int(s // LATENCY_ROLLUP_S), r[v], r[var] or "", r[lb], r[st] >= 400)
        for r, s in zip(rows, seconds, strict=True) if r[ri] == 0
    )
    # per answered instance: (model, minute, version, variant, label, 0 / 1 wrong / 2 right)
    answered = Counter(
        (r[m], int(s // ROLLUP_BUCKET_S), r[v], r[var] or "", r[lab],
         0 if tl is None or r[tl] is None else 1 + (r[tl] == r[lab]))
        for r, s in zip(rows, seconds, strict=True) if r[st] < 400 and r[lab] is not None
    )
    starts: dict[tuple[int, int], datetime] = {}
    inf: dict[InfKey, list[int]] = {}
    for (model, n, version, variant, bucket, failed), count in requests.items():
        t = inf.setdefault((model, _start(starts, n, LATENCY_ROLLUP_S), version, variant,
                            bucket), [0, 0])
        t[0] += count
        t[1] += count if failed else 0
    pred: dict[PredKey, list[int]] = {}
    for (model, n, version, variant, label, truth), count in answered.items():
        p = pred.setdefault((model, _start(starts, n, ROLLUP_BUCKET_S), version, variant,
                             label), [0, 0, 0])
        p[0] += count
        p[1] += count if truth else 0
        p[2] += count if truth == 2 else 0
    _write(conn, inf, pred)


def _epoch_seconds(at: datetime) -> float:
    """Seconds since the epoch of ``at`` (a naive ``at`` is UTC, as the registry stores it)."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _start(cache: dict[tuple[int, int], datetime], n: int, width: int) -> datetime:
    """The start of the ``n``-th ``width``-second bucket since the epoch, memoised in ``cache``."""
    start = cache.get((n, width))
    if start is None:
        start = cache[(n, width)] = _EPOCH + timedelta(seconds=n * width)
    return start


def add_feedback(conn: Connection, changes: Sequence[tuple[dict[str, Any], str | None, str]]
                 ) -> None:
    """Count label changes ``(record, old true label or None, new true label)``."""
    pred: dict[PredKey, list[int]] = {}
    for r, old, new in changes:
        if r["label"] is None:
            continue
        key = (r["model"], bucket_floor(r["created_at"]), r["version"], r["variant"] or "",
               r["label"])
        p = pred.setdefault(key, [0, 0, 0])
        p[1] += int(old is None)
        p[2] += int(new == r["label"]) - int(old is not None and old == r["label"])
    # a correction may lower ``correct``: the upsert adds negative increments as well
    _write(conn, {}, pred)


def prune(engine: Engine, before: datetime) -> int:
    """Delete the rollups of buckets starting before ``before`` rounded down to the hour (the
    coarser grid, so both tables keep the same rows' figures); how many rows."""
    cutoff = bucket_floor(before, LATENCY_ROLLUP_S)
    deleted = 0
    with engine.begin() as conn:
        for table in (INFERENCE_ROLLUP, PREDICTION_ROLLUP):
            deleted += conn.execute(sa.delete(table).where(table.c.bucket_start < cutoff)
                                    ).rowcount
    return deleted


def rebuild(conn: Connection, model: str | None = None, *, chunk: int = 20_000) -> int:
    """Recompute the rollups (of ``model``, or all) from the stored records; rows read."""
    for table in (INFERENCE_ROLLUP, PREDICTION_ROLLUP):
        delete = sa.delete(table)
        conn.execute(delete if model is None else delete.where(table.c.model == model))
    c = _RECORDS.c
    columns = [c.id, c.model, c.version, c.variant, c.row_index, c.created_at, c.status,
               c.latency_bucket, c.label, c.true_label]
    last, seen = 0, 0
    while True:
        stmt = sa.select(*columns).where(c.id > last).order_by(c.id).limit(chunk)
        if model is not None:
            stmt = stmt.where(c.model == model)
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
        if not rows:
            return seen
        for r in rows:
            if r["created_at"].tzinfo is None:
                r["created_at"] = r["created_at"].replace(tzinfo=UTC)
        add_records(conn, rows)
        seen += len(rows)
        last = rows[-1]["id"]
