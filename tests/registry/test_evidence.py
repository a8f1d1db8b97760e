"""The inference log's storage: idempotent inserts, filters and pages, feedback, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from registry import migrate
from registry.evidence import (
    BUCKET_GROWTH,
    InferenceFilter,
    apply_feedback,
    bucket_upper_ms,
    insert_records,
    latency_bucket,
    list_records,
    prune,
)
from registry.models import FeedbackCreate, FeedbackItem

T0 = datetime(2030, 6, 1, tzinfo=UTC)


def row(request_id: str, row_index: int = 0, **kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "request_id": request_id, "row_index": row_index, "created_at": T0, "model": "digits",
        "version": 1, "alias": "production", "variant": None, "caller": "app:shop",
        "status": 200, "latency_ms": 2.0, "latency_bucket": latency_bucket(2.0), "label": "7",
        "confidence": 0.9, "input_sha256": "0" * 64, "inputs": None,
    }
    values.update(kw)
    return values


def test_schema_matches_the_models(engine: Engine) -> None:
    assert migrate.check(engine) == []


def test_latency_buckets_are_two_percent_wide() -> None:
    for ms in (0.0005, 0.01, 0.37, 1.0, 12.5, 999.0):
        b = latency_bucket(ms)
        assert bucket_upper_ms(b) >= ms
        if b > 0:
            assert bucket_upper_ms(b - 1) <= ms * (1 + 1e-9)
            assert bucket_upper_ms(b) / bucket_upper_ms(b - 1) == pytest.approx(BUCKET_GROWTH)


def test_inserts_are_idempotent_and_listing_filters_and_pages(engine: Engine) -> None:
    rows = [row(f"r{i}", created_at=T0 + timedelta(seconds=i), version=1 + i % 2,
                status=200 if i % 5 else 503) for i in range(20)]
    with engine.begin() as conn:
        insert_records(conn, rows)
        insert_records(conn, rows[:5])  # a retried batch
    with Session(engine) as s:
        items, total = list_records(s, InferenceFilter(model="digits"), limit=7)
        assert total == 20 and [r.request_id for r in items] == [f"r{i}" for i in range(19, 12, -1)]
        _, total = list_records(s, InferenceFilter(model="digits", version=2))
        assert total == 10
        errors, total = list_records(s, InferenceFilter(errors_only=True))
        assert total == 4 and all(r.status == 503 for r in errors)
        window = InferenceFilter(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=8))
        assert list_records(s, window)[1] == 3
        page2, _ = list_records(s, InferenceFilter(), limit=7, offset=14)
        assert len(page2) == 6


def test_feedback_applies_once_and_ignores_the_unknown(engine: Engine) -> None:
    with engine.begin() as conn:
        insert_records(conn, [row("a", 0), row("a", 1), row("bad", status=400, label=None)])
    items = [FeedbackItem(request_id="a", row_index=0, label="7"),
             FeedbackItem(request_id="a", row_index=1, label="3"),
             FeedbackItem(request_id="a", row_index=2, label="3"),
             FeedbackItem(request_id="bad", label="1")]
    with Session(engine) as s:
        first = apply_feedback(s, items)
        s.commit()
        again = apply_feedback(s, items)
        s.commit()
        labelled, total = list_records(s, InferenceFilter(labelled=True))
    assert (first.applied, first.unchanged, len(first.unknown)) == (2, 0, 2)
    assert (again.applied, again.unchanged) == (0, 2)
    assert total == 2 and {r.true_label for r in labelled} == {"7", "3"}


def test_feedback_bodies_are_bounded() -> None:
    with pytest.raises(ValidationError):
        FeedbackCreate.model_validate({"items": [{"request_id": "a\x00", "label": "1"}]})
    with pytest.raises(ValidationError):
        FeedbackCreate.model_validate({"items": [{"request_id": "a", "label": "1",
                                                  "row_index": 2**31}]})
    with pytest.raises(ValidationError):
        FeedbackCreate.model_validate({"items": [{"request_id": "a", "label": "1"}],
                                       "labelled_at": "2030-01-01T00:00:00"})  # no zone


def test_prune_deletes_only_old_records_in_batches(engine: Engine) -> None:
    old = [row(f"old{i}", created_at=T0 - timedelta(days=40, seconds=i)) for i in range(23)]
    new = [row(f"new{i}") for i in range(4)]
    with engine.begin() as conn:
        insert_records(conn, old + new)
    assert prune(engine, T0 - timedelta(days=30), batch=5) == 23
    assert prune(engine, T0 - timedelta(days=30), batch=5) == 0
    with Session(engine) as s:
        items, total = list_records(s, InferenceFilter())
    assert total == 4 and all(r.request_id.startswith("new") for r in items)


def test_repeated_keys_in_one_batch_are_stored_and_counted_once(engine: Engine) -> None:
    import sqlalchemy as sa

    from registry import rollups

    first = row("dup", 0, label="1", inputs=[0.5, 1.5], created_at=T0 + timedelta(seconds=61))
    rows = [first, row("dup", 0, label="2"), row("other", 0, status=503, label=None),
            {k: v for k, v in row("short").items() if k not in ("alias", "inputs")}]
    with engine.begin() as conn:
        insert_records(conn, rows)
        insert_records(conn, rows)  # the whole batch again: nothing new
        counted = {t.name: sorted(tuple(r) for r in conn.execute(
            sa.select(*[c for c in t.c if c.name != "id"]))) for t in
            (rollups.INFERENCE_ROLLUP, rollups.PREDICTION_ROLLUP)}
        rollups.rebuild(conn)  # brute force: recomputed from the stored records
        rebuilt = {t.name: sorted(tuple(r) for r in conn.execute(
            sa.select(*[c for c in t.c if c.name != "id"]))) for t in
            (rollups.INFERENCE_ROLLUP, rollups.PREDICTION_ROLLUP)}
    assert counted == rebuilt
    requests = [c.name for c in rollups.INFERENCE_ROLLUP.c if c.name != "id"].index("requests")
    assert sum(r[requests] for r in counted["inference_rollup"]) == 3  # dup, other, short
    with Session(engine) as s:
        items, total = list_records(s, InferenceFilter(request_id="dup"))
        assert total == 1 and items[0].label == "1" and items[0].inputs == [0.5, 1.5]
        assert items[0].created_at == T0 + timedelta(seconds=61)
        short, _ = list_records(s, InferenceFilter(request_id="short"))
        assert short[0].alias is None and short[0].inputs is None


def test_two_transactions_storing_one_batch_at_once_count_it_once(engine: Engine) -> None:
    """Two writers store the same request ids at the same time (two server workers logging one
    client-chosen id): the second waits for the first's key (or write lock), finds the rows
    stored, and the rollups count each request once."""
    import threading

    import sqlalchemy as sa

    from registry import rollups

    rows = [row(f"same-{i}", created_at=T0 + timedelta(seconds=i)) for i in range(30)]
    first_inserted, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            first_inserted.wait(10)
            with engine.begin() as conn:  # blocks on the first's rows until it commits
                insert_records(conn, rows)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with engine.begin() as conn:
        insert_records(conn, rows)
        first_inserted.set()
        done.wait(0.5)  # the second writer is waiting on this transaction meanwhile
    thread.join(30)
    assert not thread.is_alive() and errors == []
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            sa.table("inference_record"))).scalar_one()
        requests = conn.execute(sa.select(sa.func.sum(rollups.INFERENCE_ROLLUP.c.requests))
                                ).scalar_one()
        answered = conn.execute(sa.select(sa.func.sum(rollups.PREDICTION_ROLLUP.c.answered))
                                ).scalar_one()
    assert (stored, requests, answered) == (30, 30, 30)
