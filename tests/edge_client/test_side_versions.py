"""A rollout's side versions on a real agent against the real server: a blue-green
pre-download is fetched, checked and smoke-tested without switching (a ``prefetched`` event),
and the switch then installs it without fetching it again (the server's request counters);
a shadow runs beside the active version, is never served, and its agreement reaches the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import enroll
from edgefleet.datasets import Dataset
from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from tests.edge_client.conftest import MODEL, active, fast_settings, scaled_weights
from tests.edge_client.server_process import ENROLLMENT_TOKEN, ServerProcess

pytestmark = pytest.mark.slow
TOKEN = ENROLLMENT_TOKEN.split(":", 1)[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_plan_dir: Path
           ) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("server")
    proc = ServerProcess(root, env={"EDGEFLEET_SERVER_ROLLOUT_TICK_S": "0.5"}).start()
    try:
        proc.create_model(MODEL)
        assert proc.upload(MODEL, digits_plan_dir) == 1
        weights = root / "v2.safetensors"
        weights.write_bytes(scaled_weights(digits_plan_dir, 0.5))
        assert proc.upload(MODEL, digits_plan_dir, weights=weights, plan_from_version=1) == 2
        proc.set_alias(MODEL, 1)
        yield proc
    finally:
        proc.stop()


def start_rollout(server: ServerProcess, body: dict[str, Any]) -> int:
    with server.admin() as admin:
        r = admin.post("/api/v1/rollouts", json={"model": MODEL, "candidate": 2, **body})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def abort(server: ServerProcess, rollout_id: int) -> None:
    with server.admin() as admin:
        r = admin.post(f"/api/v1/rollouts/{rollout_id}/abort", json={"reason": "test done"})
        assert r.status_code == 200, r.text


def artifact_requests(server: ServerProcess) -> dict[str, float]:
    """The server's count of artifact downloads so far, by kind (its ``/metrics``)."""
    counts = {"plan": 0.0, "weights": 0.0, "manifest": 0.0}
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if not line.startswith("edgefleet_http_requests_total{") or 'method="GET"' not in line:
            continue
        for kind in counts:
            if f'/versions/{{version}}/{kind}"' in line:
                counts[kind] += float(line.rsplit(" ", 1)[1])
    return counts


def poll_until(agent: Agent, what: str, check: Any, timeout_s: float = 60.0) -> None:
    """Poll the assignment until ``check()`` holds (the controller ticks every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        agent.poll()
        time.sleep(0.5)


@pytest.fixture
def device(server: ServerProcess, tmp_path: Path) -> Iterator[Agent]:
    settings = fast_settings(tmp_path / "agent")
    enroll(server.url, TOKEN, settings.credentials_path, device_id=f"dev-{uuid.uuid4().hex[:8]}",
           model=MODEL)
    with Agent(settings) as agent:
        assert agent.poll() == "installed"
        yield agent


def test_blue_green_prefetch_is_checked_without_switching(device: Agent,
                                                          server: ServerProcess) -> None:
    rid = start_rollout(server, {"strategy": "blue_green", "prefetch_devices": 1})
    try:
        poll_until(device, "the prefetch", lambda: any(
            e.kind == "prefetched" for e in device.telemetry.events.pending()))
        assert active(device).info.version == 1  # nothing switched
        assert (device.settings.models_dir / f".prefetch-{MODEL}-2" / "plan.tflite").exists()
        device.flush_telemetry()
        assert device.drain_outbox().error is None
        with server.admin() as admin:
            events = admin.get("/api/v1/telemetry/events", params={
                "device": device.device_id, "kind": "prefetched"}).json()["items"]
        assert [(e["version"], e["kind"]) for e in events] == [(2, "prefetched")]
    finally:
        abort(server, rid)


def test_shadow_runs_beside_and_is_never_served(device: Agent, server: ServerProcess,
                                                digits_data: Dataset) -> None:
    rid = start_rollout(server, {"strategy": "shadow", "horizon_s": 600})
    try:
        poll_until(device, "the shadow", lambda: device.telemetry.shadow is not None)
        x = digits_data.x_test[:40].astype(np.float32)
        pred = device.predict(x)
        assert pred.path == "local" and pred.version == 1  # the active version answered
        ours = active(device).runtime.predict(x)
        assert np.allclose(pred.probs, ours)  # the shadow's answer is never returned
        shadow = device.side.shadow
        assert shadow is not None and (shadow.version, shadow.n) == (2, 40)
        expected = int(np.sum(np.argmax(shadow.runtime.predict(x), 1) == np.argmax(ours, 1)))
        assert shadow.agree == expected
        reports = device.flush_telemetry()
        (mine,) = [r for r in reports if r.version == 1]
        assert mine.shadow is not None and (mine.shadow.n, mine.shadow.agree) == (40, expected)
        assert device.drain_outbox().error is None
        with server.admin() as admin:
            stored = admin.get("/api/v1/telemetry", params={"device": device.device_id}).json()
        rows = [r for r in stored["items"] if r["shadow_version"] == 2]
        assert [(r["shadow_n"], r["shadow_agree"]) for r in rows] == [(40, expected)]
    finally:
        abort(server, rid)
    poll_until(device, "the shadow's removal", lambda: device.telemetry.shadow is None)
    assert not list(device.settings.models_dir.glob(".shadow-*"))


def test_blue_green_switch_installs_the_prefetch_without_a_second_download(
        device: Agent, server: ServerProcess, digits_plan_dir: Path,
        digits_data: Dataset) -> None:
    rid = start_rollout(server, {"strategy": "blue_green", "prefetch_devices": 1, "guards": [],
                                 "steps": [{"bake_s": 0, "timeout_s": 120},
                                           {"bake_s": 600, "timeout_s": 1200}]})
    try:
        poll_until(device, "the prefetch", lambda: any(
            e.kind == "prefetched" for e in device.telemetry.events.pending()))
        device.flush_telemetry()  # the `prefetched` event lets the controller switch
        assert device.drain_outbox().error is None
        fetched = artifact_requests(server)  # after a later request: the downloads are counted
        assert fetched["weights"] >= 1  # the pre-download fetched the candidate's weights
        poll_until(device, "the switch", lambda: active(device).info.version == 2)
        assert artifact_requests(server) == fetched  # nothing fetched a second time
        assert not (device.settings.models_dir / f".prefetch-{MODEL}-2").exists()
        manifest = PlanManifest.load(digits_plan_dir / "manifest.json")
        candidate = PlanRuntime.from_bytes(
            (digits_plan_dir / "plan.tflite").read_bytes(), manifest,
            weights_from_bytes(scaled_weights(digits_plan_dir, 0.5), manifest=manifest))
        x = digits_data.x_test[:50].astype(np.float32)
        assert np.allclose(active(device).runtime.predict(x), candidate.predict(x),
                           rtol=0, atol=1e-6)
        (switch,) = [e for e in device.telemetry.events.pending() if e.kind == "switch"]
        assert (switch.version, switch.from_version) == (2, 1)
        assert "installed from the verified pre-download" in switch.detail
    finally:
        abort(server, rid)  # switches production back for the other tests
