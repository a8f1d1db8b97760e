"""Telemetry: stored once per idempotency key, queryable by model, version, device and time;
only plausible reports (for what the device was assigned, with sane values) are stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from edgefleet.wire import (
    AliasMove,
    EnrollRequest,
    InferenceStats,
    LocalEvaluation,
    TelemetryReport,
)
from registry.aliases import set_alias
from registry.catalog import create_model
from registry.db import session_scope
from registry.devices import enroll, get_device
from registry.errors import (
    IdempotencyConflict,
    InvalidQueryError,
    NotFoundError,
    PermissionDeniedError,
)
from registry.models import AliasEvent, ModelCreate, utcnow
from registry.store import ArtifactStore
from registry.telemetry import RECENTLY_ASSIGNED, list_reports, record_report
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
    move(engine, "production", 1)
    return engine


def move(engine: Engine, alias: str, version: int) -> None:
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", alias, AliasMove(version=version), actor="test")


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
        if hour == 3:
            move(devices, "production", 2)  # b goes on reporting v1, which it runs
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


def stored(engine: Engine) -> int:
    with session_scope(engine) as s:
        return list_reports(s).total


def test_only_assigned_versions_are_accepted(devices: Engine) -> None:
    with pytest.raises(PermissionDeniedError, match="version 2 of 'digits' is not assigned"):
        send(devices, "a", report("key-v2-early", version=2))  # v2 never assigned to anyone
    assert stored(devices) == 0
    send(devices, "a", report("key-v1-00001"))  # production
    move(devices, "production", 2)
    send(devices, "a", report("key-v2-00001", version=2))  # production now
    send(devices, "b", report("key-v1-00002"))  # recently in production
    ack = send(devices, "a", report("key-v1-00001"))  # a retry is acknowledged whatever moved
    assert ack.duplicate
    with session_scope(devices, write=True) as s:  # production left v1 long ago
        s.execute(sa.update(AliasEvent).values(at=utcnow() - RECENTLY_ASSIGNED * 2))
        device = get_device(s, "b")
        device.running_version_id = device.assigned_version_id = None
    with pytest.raises(PermissionDeniedError, match="not assigned to device 'b'"):
        send(devices, "b", report("key-v1-00003"))
    send(devices, "b", report("key-v2-00002", version=2))  # what a poll would hand it now
    assert stored(devices) == 4


def test_reports_for_another_model_are_refused(devices: Engine, store: ArtifactStore,
                                               plan_files: PlanFiles) -> None:
    with session_scope(devices, write=True) as s:
        create_model(s, ModelCreate(name="other"))
    with pytest.raises(NotFoundError):  # "other" has no version 1 ...
        send(devices, "a", report("key-other-1").model_copy(update={"model": "other"}))
    model_with_versions(devices, store, plan_files, seeds=(), model="wine")
    with pytest.raises(PermissionDeniedError, match="assigned another model"):
        send(devices, "a", report("key-wine-01").model_copy(update={"model": "wine"}))
    assert stored(devices) == 0


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"inference": InferenceStats().model_copy(update={"local": -1})}, "inference.local"),
        ({"dropped_reports": 2**31}, "dropped_reports"),
        ({"inference": InferenceStats().model_copy(update={"latency_ms_p99": float("nan")})},
         "latency_ms_p99"),
        ({"local_eval": LocalEvaluation(n_examples=1).model_copy(update={"loss": float("inf")})},
         "local_eval.loss"),
        ({"window_end": utcnow() + timedelta(days=30)}, "future"),
    ],
)
def test_implausible_values_are_refused(
    devices: Engine, update: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        send(devices, "a", report("key-values1").model_copy(update=update))
    assert stored(devices) == 0
