"""Device events: the agent turns model switches, failed smoke tests, crashes and rollbacks into
telemetry events, keeps them across a restart, and they reach the real server once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import enroll
from edge_client.events import DeviceEvents, coalesce, from_model_event
from edge_client.outbox import Outbox
from edge_client.storage import StateStore
from edge_client.telemetry import Telemetry, merge_report_bodies
from edgefleet.wire import DeviceEvent, TelemetryReport
from tests.edge_client.conftest import MODEL, active, fast_settings, poisoned_weights
from tests.edge_client.server_process import ENROLLMENT_TOKEN, ServerProcess

TOKEN = ENROLLMENT_TOKEN.split(":", 1)[1]
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def info(version: int) -> dict[str, Any]:
    return {"model": "m", "version": version, "plan_sha256": "a", "weights_sha256": "b",
            "installed_at": 0.0}


def test_model_events_become_wire_events() -> None:
    current: dict[str, int] = {}
    first = from_model_event("installed", {"model": "m", "version": 1}, current, T0)
    second = from_model_event("installed", {"model": "m", "version": 2}, current, T0)
    assert first is not None and (first.kind, first.from_version) == ("switch", None)
    assert second is not None and (second.kind, second.version, second.from_version) == (
        "switch", 2, 1)
    smoke = from_model_event("rejected", {"model": "m", "version": 3,
                                          "reason": "smoke test: NaN"}, current, T0)
    refused = from_model_event("rejected", {"model": "m", "version": 3,
                                            "reason": "signature refused"}, current, T0)
    assert smoke is not None and smoke.kind == "smoke_failed" and "NaN" in smoke.detail
    assert refused is not None and refused.kind == "refused"
    back = from_model_event("rolled_back", {"from": info(2), "to": info(1), "reason": "x"},
                            current, T0)
    assert back is not None and (back.kind, back.version, back.to_version) == ("rollback", 2, 1)
    assert current == {"m": 1}
    gone = from_model_event("rolled_back", {"from": info(1), "to": None, "reason": "x"},
                            current, T0)
    assert gone is not None and gone.to_version is None and current == {}
    assert from_model_event("rolled_back", {"from": None, "to": None}, current, T0) is None
    assert from_model_event("something", {}, current, T0) is None


def test_crash_events_of_a_version_add_up() -> None:
    crash = DeviceEvent(kind="crash", at=T0, model="m", version=2, count=2)
    later = crash.model_copy(update={"at": T0 + timedelta(seconds=5), "count": 3})
    switch = DeviceEvent(kind="switch", at=T0, model="m", version=2)
    out = coalesce([crash, switch, later])
    assert [(e.kind, e.count) for e in out] == [("crash", 5), ("switch", 1)]
    assert out[0].at == later.at
    assert len(coalesce([switch] * 150)) == 100


def test_pending_events_survive_a_restart_and_ride_on_the_next_report(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite3")
    events = DeviceEvents(state)
    events.observe("installed", {"model": "m", "version": 1})
    events.observe("rejected", {"model": "m", "version": 2, "reason": "does not load"})
    state.close()
    state = StateStore(tmp_path / "state.sqlite3")
    outbox = Outbox(tmp_path / "outbox.sqlite3", merge=merge_report_bodies)
    telemetry = Telemetry(outbox, state)
    assert [e.kind for e in telemetry.events.pending()] == ["switch", "smoke_failed"]
    telemetry.record_error("m", 1)
    telemetry.record_error("m", 1)
    reports = telemetry.flush(("m", 1))
    assert len(reports) == 1
    assert [(e.kind, e.version, e.count) for e in reports[0].events] == [
        ("crash", 1, 2), ("switch", 1, 1), ("smoke_failed", 2, 1)]
    assert telemetry.events.pending() == [] and DeviceEvents(state).pending() == []
    assert telemetry.flush(("m", 1))[0].events == []  # sent once: nothing left
    state.close()
    outbox.close()


def test_events_without_an_active_model_get_a_report_of_their_own(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite3")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    telemetry = Telemetry(outbox, state)
    telemetry.events.observe("rejected", {"model": "m", "version": 4, "reason": "smoke test"})
    reports = telemetry.flush(None)
    assert [(r.model, r.version, [e.kind for e in r.events]) for r in reports] == [
        ("m", 4, ["smoke_failed"])]
    state.close()
    outbox.close()


def test_merged_reports_keep_every_event() -> None:
    def body(key: str, events: list[DeviceEvent]) -> str:
        return TelemetryReport(idempotency_key=key, model="m", version=1, window_start=T0,
                               window_end=T0, events=events).model_dump_json()

    crash = DeviceEvent(kind="crash", at=T0, model="m", version=1, count=1)
    switch = DeviceEvent(kind="switch", at=T0, model="m", version=1)
    merged = TelemetryReport.model_validate_json(
        merge_report_bodies(body("k-0000001", [crash, switch]), body("k-0000002", [crash])))
    assert [(e.kind, e.count) for e in merged.events] == [("crash", 2), ("switch", 1)]


# --- against the real server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_plan_dir: Path
           ) -> Iterator[ServerProcess]:
    """v1 (trained), v2 (the same weights), v3 (fails the agent's smoke test)."""
    root = tmp_path_factory.mktemp("server")
    proc = ServerProcess(root).start()
    try:
        proc.create_model(MODEL)
        assert proc.upload(MODEL, digits_plan_dir) == 1
        assert proc.upload(MODEL, digits_plan_dir, plan_from_version=1) == 2
        weights = root / "poisoned.safetensors"
        weights.write_bytes(poisoned_weights(digits_plan_dir))
        assert proc.upload(MODEL, digits_plan_dir, weights=weights, plan_from_version=1) == 3
        proc.set_alias(MODEL, 1)
        yield proc
    finally:
        proc.stop()


def server_events(server: ServerProcess, device_id: str) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/api/v1/telemetry/events", params={"device": device_id})
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))  # oldest first


@pytest.mark.slow
def test_switch_smoke_failure_crash_and_rollback_reach_the_server_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    settings = fast_settings(tmp_path / "agent", failures_before_rollback=3)
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    enroll(server.url, TOKEN, settings.credentials_path, device_id=device_id, model=MODEL)
    with Agent(settings) as agent:
        assert agent.poll() == "installed"  # v1
        server.set_alias(MODEL, 2)
        assert agent.poll() == "installed"  # v2: a switch from v1
        server.set_alias(MODEL, 3)
        assert agent.poll() == "rejected"  # v3 fails its smoke test
        runtime = active(agent).runtime

        def broken(x: np.ndarray) -> np.ndarray:
            raise RuntimeError("interpreter fault")

        runtime.predict = broken  # type: ignore[method-assign]  # the fault under test
        server.stop()  # the server is down while the model crashes: the outbox keeps it all
        for _ in range(3):
            _predict_quietly(agent)
        assert active(agent).info.version == 1  # rolled back after three failures
        agent.flush_telemetry()
        assert agent.drain_outbox().failed >= 1
    server.start()
    server.set_alias(MODEL, 1)
    with Agent(settings) as agent:  # a restart: the outbox still holds the reports
        agent.flush_telemetry()
        assert agent.drain_outbox().error is None
        assert agent.outbox.depth() == 0
        assert agent.drain_outbox().sent == 0
    got = [(e["kind"], e["version"], e["from_version"], e["to_version"], e["count"])
           for e in server_events(server, device_id)]
    assert got == [
        ("switch", 1, None, None, 1),
        ("switch", 2, 1, None, 1),
        ("smoke_failed", 3, None, None, 1),
        ("crash", 2, None, None, 3),
        ("rollback", 2, None, 1, 1),
    ]


def _predict_quietly(agent: Agent) -> None:
    """A prediction while the local model crashes and the server is down: it fails."""
    with pytest.raises(Exception, match="fallback"):
        agent.predict(np.zeros(64))
