"""Rollups of the inference log: per model, version, variant and minute, kept in step with it.

Per model, version and variant, they hold

* in ``inference_rollup``, per hour (``LATENCY_ROLLUP_S``) of ``created_at``: requests (records
  with ``row_index`` 0), errors (status >= 400) and server errors (``server_errors``, the part
  of them with status >= 500) per latency bucket — request counts, error rates and
  nearest-rank quantiles;
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
for records logged before, with the counters the table has at that revision).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from registry.models.evidence import (
    LATENCY_ROLLUP_S,
    ROLLUP_BUCKET_S,
    InferenceRecord,
    InferenceRollup,
    PredictionRollup,
)

__all__ = [
    "INFERENCE_ROLLUP",
    "INF_COUNTERS",
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
#: The counters of ``inference_rollup``, in the order of :func:`_tally`'s lists.
INF_COUNTERS = ("requests", "errors", "server_errors")
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
    """Add ``values``' counters to their rows of ``table`` (by ``keys``), creating the rows that
    are missing: multi-row ``INSERT … ON CONFLICT (keys) DO UPDATE SET c = c + excluded.c`` as
    driver SQL, the values bound as SQLAlchemy binds them (one statement step per chunk, not
    one per row)."""
    if not values:
        return
    dialect = conn.dialect
    if dialect.name not in ("postgresql", "sqlite"):  # pragma: no cover - SQLite, PostgreSQL
        raise NotImplementedError(f"no upsert for {dialect.name}")
    columns = (*keys, *counters)
    # sorted: concurrent writers take the rows' locks in the same order (no deadlock)
    ordered = sorted(values, key=lambda v: tuple(v[k] for k in keys))
    procs = [table.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in columns]
    rows = [tuple([v[k] if proc is None or v[k] is None else proc(v[k])
                   for k, proc in zip(columns, procs, strict=True)]) for v in ordered]
    per = max(1, _MAX_PARAMS // len(columns))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.exec_driver_sql(_upsert_sql(dialect, table.name, tuple(keys), tuple(counters),
                                         len(chunk)),
                             tuple(itertools.chain.from_iterable(chunk)))


_MAX_PARAMS = 30_000  # bound parameters per statement (SQLite allows 32,766)


@functools.lru_cache(maxsize=64)
def _upsert_sql(dialect: sa.Dialect, table: str, keys: tuple[str, ...],
                counters: tuple[str, ...], n: int) -> str:
    """The upsert of ``n`` rows of ``keys`` and ``counters`` into ``table``, with the driver's
    positional placeholders (``?`` or ``%s``)."""
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * (len(keys) + len(counters))) + ")"
    added = ", ".join(f"{quote(c)} = {quote(table)}.{quote(c)} + excluded.{quote(c)}"
                      for c in counters)
    return (f"INSERT INTO {quote(table)} ({', '.join(quote(k) for k in (*keys, *counters))}) "
            f"VALUES {', '.join([one] * n)} "
            f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {added}")


def _write(conn: Connection, inf: dict[InfKey, list[int]], pred: dict[PredKey, list[int]],
           inf_counters: Sequence[str] = INF_COUNTERS) -> None:
    """Upsert the increments: ``inf`` values are :data:`INF_COUNTERS` (of which only
    ``inf_counters`` are written), ``pred`` values answered, labelled, correct."""
    inf_keys = ["model", "bucket_start", "version", "variant", "latency_bucket"]
    pred_keys = ["model", "bucket_start", "version", "variant", "label"]
    _upsert(conn, INFERENCE_ROLLUP, inf_keys,
            [dict(zip(inf_keys, k, strict=True), requests=v[0], errors=v[1], server_errors=v[2])
             for k, v in inf.items() if any(v)],
            list(inf_counters))
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
    per table, over the columns of ``rows``), then each table gets one upsert of its touched
    buckets."""
    if rows:
        _write(conn, *_tally(columns, rows))


def _tally(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
           ) -> tuple[dict[InfKey, list[int]], dict[PredKey, list[int]]]:
    """The increments of ``rows`` (not empty): per request bucket :data:`INF_COUNTERS`, per
    prediction bucket answered, labelled and correct instances."""
    ix = {k: i for i, k in enumerate(columns)}
    cols = list(zip(*rows, strict=True))
    models, versions, row_index, statuses, buckets, labels = (
        cols[ix[k]] for k in ("model", "version", "row_index", "status", "latency_bucket",
                              "label"))
    variants = [v or "" for v in cols[ix["variant"]]]
    truths = cols[ix["true_label"]] if "true_label" in ix else (None,) * len(rows)
    seconds = _epoch_seconds(cols[ix["created_at"]])
    hours = [int(s // LATENCY_ROLLUP_S) for s in seconds]
    minutes = [int(s // ROLLUP_BUCKET_S) for s in seconds]
    # 0 answered, 1 client error (4xx), 2 server error (>= 500)
    failed = [(s >= 400) + (s >= 500) for s in statuses]
    # per request (row 0): (model, hour, version, variant, latency bucket, failed)
    keys = zip(models, hours, versions, variants, buckets, failed, strict=True)
    requests = Counter(keys if all(i == 0 for i in row_index) else
                       (k for k, i in zip(keys, row_index, strict=True) if i == 0))
    # per answered instance: (model, minute, version, variant, label, 0 / 1 wrong / 2 right)
    answered = Counter(
        (m, n, v, var, lab, 0 if truth is None else 1 + (truth == lab))
        for m, n, v, var, lab, truth, bad in zip(models, minutes, versions, variants, labels,
                                                  truths, failed, strict=True)
        if not bad and lab is not None
    )
    starts: dict[tuple[int, int], datetime] = {}
    inf: dict[InfKey, list[int]] = {}
    for (model, n, version, variant, bucket, bad), count in requests.items():
        t = inf.setdefault((model, _start(starts, n, LATENCY_ROLLUP_S), version, variant,
                            bucket), [0, 0, 0])
        t[0] += count
        t[1] += count if bad else 0
        t[2] += count if bad == 2 else 0
    pred: dict[PredKey, list[int]] = {}
    for (model, n, version, variant, label, truth), count in answered.items():
        p = pred.setdefault((model, _start(starts, n, ROLLUP_BUCKET_S), version, variant,
                             label), [0, 0, 0])
        p[0] += count
        p[1] += count if truth else 0
        p[2] += count if truth == 2 else 0
    return inf, pred


def _epoch_seconds(times: Sequence[datetime]) -> list[float]:
    """Seconds since the epoch of each of ``times`` (a naive time is UTC, as the registry
    stores it)."""
    if all(t.tzinfo is not None for t in times):
        return list(map(datetime.timestamp, times))
    return [(t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp() for t in times]


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
    """Recompute the rollups (of ``model``, or all) from the stored records; rows read.

    The request rollups get those of :data:`INF_COUNTERS` their table has: migration 0005 runs
    this before migration 0009 adds ``server_errors``."""
    present = {col["name"] for col in sa.inspect(conn).get_columns(INFERENCE_ROLLUP.name)}
    counters = [k for k in INF_COUNTERS if k in present]
    for table in (INFERENCE_ROLLUP, PREDICTION_ROLLUP):
        delete = sa.delete(table)
        conn.execute(delete if model is None else delete.where(table.c.model == model))
    c = _RECORDS.c
    columns = ("id", *_ROW_COLUMNS, "true_label")
    last, seen = 0, 0
    while True:
        stmt = sa.select(*[c[k] for k in columns]).where(c.id > last).order_by(c.id).limit(chunk)
        if model is not None:
            stmt = stmt.where(c.model == model)
        rows = [tuple(r) for r in conn.execute(stmt)]
        if not rows:
            return seen
        _write(conn, *_tally(columns, rows), counters)
        seen += len(rows)
        last = rows[-1][0]
