"""The inference log writer's batch rows: the same records as computed one answer at a time, and
stored once (with their rollups) on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Engine

from registry import rollups
from registry.evidence import TABLE, latency_bucket
from server.evidence.records import COLUMNS, Answer, rows
from server.evidence.writer import InferenceLog

T0 = datetime(2030, 7, 1, 12, 0, 30, 123456, tzinfo=UTC)


def mixed_batch(tag: str) -> list[Answer]:
    """Answers of several shapes and dtypes: one and three rows, float64 and float32 inputs, a
    refusal, a sampled answer, a long variant, two models of different widths."""
    rng = np.random.default_rng(7)

    def answered(i: int, n: int, features: int, classes: int, dtype: Any, **kw: Any) -> Answer:
        probs = rng.random((n, classes)).astype(np.float32)
        return Answer(
            request_id=f"{tag}-{i}", created_at=T0 + timedelta(seconds=50 * i),
            model=f"{tag}-digits" if features == 64 else f"{tag}-wide", version=1 + i % 2,
            alias="production", caller="app:test", status=200, latency_ms=0.3 + i,
            x=rng.random((n, features)).astype(dtype), probs=probs,
            labels=[str(int(k)) for k in probs.argmax(axis=1)], **kw,
        )

    return [
        answered(0, 1, 64, 10, np.float32),
        answered(1, 3, 64, 10, np.float64, sampled=True),
        Answer(request_id=f"{tag}-2", created_at=T0, model=f"{tag}-digits", version=1, alias=None,
               caller="app:test", status=400, latency_ms=0.1),
        answered(3, 2, 8, 3, np.float32, variant="v" * 80),
        answered(4, 1, 64, 10, np.float32, variant="canary"),
    ]


def expected(answer: Answer) -> list[dict[str, Any]]:
    """``answer``'s records computed one row at a time."""
    base = {
        "request_id": answer.request_id, "created_at": answer.created_at,
        "model": answer.model, "version": answer.version, "alias": answer.alias,
        "variant": answer.variant[:64] if answer.variant else None, "caller": answer.caller,
        "status": answer.status, "latency_ms": answer.latency_ms,
        "latency_bucket": latency_bucket(answer.latency_ms),
    }
    if answer.status >= 400 or answer.labels is None:
        return [{**base, "row_index": 0, "label": None, "confidence": None,
                 "input_sha256": None, "inputs": None}]
    assert answer.x is not None and answer.probs is not None
    out = []
    for i, label in enumerate(answer.labels):
        x = np.asarray(answer.x[i], dtype=np.float32)
        out.append({**base, "row_index": i, "label": label,
                    "confidence": float(np.max(answer.probs[i])),
                    "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                    "inputs": x.tolist() if answer.sampled else None})
    return out


def test_batch_rows_equal_the_records_of_each_answer() -> None:
    batch = mixed_batch("r")
    built = [dict(zip(COLUMNS, r, strict=True)) for r in rows(batch)]
    assert built == [rec for a in batch for rec in expected(a)]
    assert all(isinstance(r["confidence"], float) for r in built if r["label"] is not None)


def test_the_writer_stores_each_row_once_with_its_rollups(engine: Engine) -> None:
    tag = f"w{id(engine)}"
    batch = mixed_batch(tag)
    log = InferenceLog(engine)
    log._write(batch)
    log._write(batch[:2])  # a retried batch: nothing stored or counted twice
    want = [rec for a in batch for rec in expected(a)]
    models = [f"{tag}-digits", f"{tag}-wide"]
    inf, pred = rollups.INFERENCE_ROLLUP, rollups.PREDICTION_ROLLUP
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(*(TABLE.c[k] for k in COLUMNS)).where(TABLE.c.request_id.like(f"{tag}-%"))
            .order_by(TABLE.c.request_id, TABLE.c.row_index)).mappings().all()
        requests, errors = conn.execute(sa.select(
            sa.func.sum(inf.c.requests), sa.func.sum(inf.c.errors)).where(
                inf.c.model.in_(models))).one()
        answered = conn.execute(sa.select(sa.func.sum(pred.c.answered)).where(
            pred.c.model.in_(models))).scalar_one()
    assert [dict(r) for r in stored] == want
    assert (requests, errors) == (len(batch), 1)
    assert answered == sum(1 for r in want if r["label"] is not None)


def test_a_batch_of_one_row_answers_is_built_column_wise_with_the_same_records() -> None:
    """The common batch (one-row answers, a refusal among them, float64 inputs, variants short
    and long) gives the records of each answer; a sampled answer sends it the general way."""
    rng = np.random.default_rng(3)

    def one(i: int, **kw: Any) -> Answer:
        probs = rng.random((1, 10)).astype(np.float32)
        return Answer(request_id=f"c-{i}", created_at=T0 + timedelta(milliseconds=i),
                      model="digits", version=1, alias="production", caller="app:test",
                      status=200, latency_ms=0.2 + 0.01 * i,
                      x=rng.random((1, 64)).astype(np.float32 if i % 2 else np.float64),
                      probs=probs, labels=[str(int(probs.argmax()))], **kw)

    batch = [one(i, variant=("v" * 70 if i == 3 else "canary" if i == 4 else None))
             for i in range(8)]
    batch.insert(5, Answer(request_id="c-refused", created_at=T0, model="digits", version=1,
                           alias="production", caller="app:test", status=422,
                           latency_ms=0.05))
    for b in (batch, [*batch, one(9, sampled=True)]):
        built = [dict(zip(COLUMNS, r, strict=True)) for r in rows(b)]
        assert built == [rec for a in b for rec in expected(a)]
