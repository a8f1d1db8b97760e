"""Telemetry: stored once per idempotency key, queryable by model, version, device and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from edgefleet.wire import EnrollRequest, InferenceStats, LocalEvaluation, TelemetryReport
from registry.db import session_scope
from registry.devices import enroll, get_device
from registry.errors import IdempotencyConflict, InvalidQueryError, NotFoundError
from registry.store import ArtifactStore
from registry.telemetry import list_reports, record_report
from tests.registry.support import PlanFiles, model_with_versions, run_in_threads

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def report(key: str, *, start: int = 0, version: int = 1, local: int = 10) -> TelemetryReport:
    return TelemetryReport(
        idempotency_key=key,
        model="digits",
        version=version,
        window_start=T0 + timedelta(hours=start),
        window_end=T0 + timedelta(hours=start + 1),
        inference=InferenceStats(local=local, fallback=1, latency_ms_p50=0.1),
        local_eval=LocalEvaluation(n_examples=20, accuracy=0.9, loss=0.3),
    )


@pytest.fixture
def devices(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    model_with_versions(engine, store, plan_files, seeds=(1,))
    with session_scope(engine, write=True) as s:
        for d in ("a", "b"):
            enroll(s, EnrollRequest(enrollment_token="t", device_id=d, model="digits"))
    return engine


def send(engine: Engine, device: str, rep: TelemetryReport):  # type: ignore[no-untyped-def]
    with session_scope(engine, write=True) as s:
        return record_report(s, get_device(s, device), rep)


def test_retries_are_stored_once(devices: Engine) -> None:
    first = send(devices, "a", report("key-00001"))
    again = send(devices, "a", report("key-00001"))
    assert not first.duplicate and again.duplicate and again.report_id == first.report_id
    other_device = send(devices, "b", report("key-00001"))  # keys are per device
    assert not other_device.duplicate and other_device.report_id != first.report_id
    with pytest.raises(IdempotencyConflict, match="different report"):
        send(devices, "a", report("key-00001", local=11))
    with session_scope(devices) as s:
        assert list_reports(s).total == 2
        assert get_device(s, "a").running_version_id is not None


def test_concurrent_retries_store_once(devices: Engine) -> None:
    acks = []
    errors = run_in_threads(lambda: acks.append(send(devices, "a", report("key-concurrent"))), 6)
    assert errors == []
    assert len({a.report_id for a in acks}) == 1
    assert sum(not a.duplicate for a in acks) == 1


def test_bad_reports(devices: Engine) -> None:
    bad_window = report("key-00002").model_copy(update={"window_end": T0 - timedelta(hours=1)})
    with pytest.raises(InvalidQueryError, match="window_end"):
        send(devices, "a", bad_window)
    with pytest.raises(NotFoundError):
        send(devices, "a", report("key-00003", version=7))
    with pytest.raises(NotFoundError):
        send(devices, "a", report("key-00004").model_copy(update={"model": "nope"}))
    with session_scope(devices) as s:
        assert list_reports(s).total == 0


def test_list_reports_by_model_version_device_and_time(devices: Engine) -> None:
    for hour in range(6):
        send(devices, "a", report(f"a-{hour:06d}", start=hour, version=1 + hour // 3))
        send(devices, "b", report(f"b-{hour:06d}", start=hour))
    with session_scope(devices) as s:
        assert list_reports(s).total == 12
        v2 = list_reports(s, model="digits", version=2)
        assert v2.total == 3 and {r.device_id for r in v2.items} == {"a"}
        b = list_reports(
            s, device="b", since=T0 + timedelta(hours=2, minutes=30), until=T0 + timedelta(hours=4)
        )
        assert [r.window_start.hour for r in b.items] == [2, 3, 4]
        page = list_reports(s, model="digits", limit=5, offset=10)
        assert page.total == 12 and len(page.items) == 2
        ends = [r.window_end for r in list_reports(s).items]
        assert ends == sorted(ends)
        first = list_reports(s, device="a", limit=1).items[0]
        assert first.eval_accuracy == 0.9 and first.inference_local == 10
        assert first.window_start.tzinfo is not None
        with pytest.raises(InvalidQueryError):
            list_reports(s, version=1)
