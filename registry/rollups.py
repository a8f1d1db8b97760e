"""Rollups of the inference log: per model, version, variant and minute, kept in step with it.

Per model, version and variant, they hold

* in ``inference_rollup``, per hour (``LATENCY_ROLLUP_S``) of ``created_at``: requests (records
  with ``row_index`` 0) and errors (status >= 400) per latency bucket — request counts, error
  rates and nearest-rank quantiles;
* in ``prediction_rollup``, per minute (``ROLLUP_BUCKET_S``): answered instances per predicted
  label, and how many of them carry a true label and how many of those are right — the
  prediction distribution and accuracy per window.

They change only by increments computed from rows actually stored: :func:`add_records` is called
by :func:`registry.evidence.insert_records` with the rows its idempotent insert returned (a
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


def add_records(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Count newly stored records (column → value dicts) into their buckets: the batch is
    summed in dicts first, then each table gets one upsert of its touched buckets."""
    inf: dict[InfKey, list[int]] = {}
    pred: dict[PredKey, list[int]] = {}
    starts: dict[int, datetime] = {}  # epoch second → bucket start, shared by the batch
    for r in rows:
        seconds = _epoch_seconds(r["created_at"])
        variant = r.get("variant") or ""
        if r["row_index"] == 0:
            hour = _start(starts, seconds, LATENCY_ROLLUP_S)
            t = inf.setdefault((r["model"], hour, r["version"], variant, r["latency_bucket"]),
                               [0, 0])
            t[0] += 1
            t[1] += int(r["status"] >= 400)
        if r["status"] < 400 and r.get("label") is not None:
            bucket = _start(starts, seconds, ROLLUP_BUCKET_S)
            p = pred.setdefault((r["model"], bucket, r["version"], variant, r["label"]),
                                [0, 0, 0])
            p[0] += 1
            true = r.get("true_label")
            if true is not None:
                p[1] += 1
                p[2] += int(true == r["label"])
    _write(conn, inf, pred)


def _epoch_seconds(at: datetime) -> float:
    """Seconds since the epoch of ``at`` (a naive ``at`` is UTC, as the registry stores it)."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _start(cache: dict[int, datetime], seconds: float, width: int) -> datetime:
    """What :func:`bucket_floor` gives for ``seconds`` since the epoch, memoised in ``cache``."""
    key = int(seconds // width) * width
    start = cache.get(key)
    if start is None:
        start = cache[key] = _EPOCH + timedelta(seconds=key)
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
