"""``/api/v1/rollouts`` and ``edgefleet rollout`` over the app (ASGI), on SQLite and PostgreSQL.

The controller's thread is off (``rollout_tick_s=0``); tests tick with
:meth:`server.rollouts.RolloutController.tick_all` over the app's own engine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from registry.db import session_scope
from registry.models import utcnow
from server.main import create_app
from server.rollouts import RolloutController
from tests.registry.support import PlanFiles
from tests.registry.test_rollouts import mixed_salt
from tests.server.support import ADMIN, Api, make_settings


@pytest.fixture
def app_client(engine: Engine, db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(db_url, tmp_path, rollout_tick_s=0))) as c:
        yield c


@pytest.fixture
def fleet(app_client: TestClient, plan_files: PlanFiles) -> tuple[Api, dict[str, dict[str, str]]]:
    api = Api(app_client, plan_files)
    api.production()
    api.publish(weights=plan_files.perturbed_weights(1), full=False,
                metadata={"plan_from_version": 1})
    api.publish(weights=plan_files.perturbed_weights(2), full=False,
                metadata={"plan_from_version": 1})
    devices = {f"d{i}": api.enrol(f"d{i}") for i in range(6)}
    with session_scope(app_client.app.state.edgefleet.engine, write=True) as s:  # type: ignore[attr-defined]
        mixed_salt(s, list(devices))
    return api, devices


def controller(client: TestClient) -> RolloutController:
    return RolloutController(client.app.state.edgefleet.engine, 0)  # type: ignore[attr-defined]


def poll_and_report(client: TestClient, devices: dict[str, dict[str, str]],
                    accuracy: dict[int, float]) -> dict[str, int]:
    """Each device polls its assignment and reports its version's accuracy on 50 examples."""
    out = {}
    now = utcnow()
    for device_id, auth in devices.items():
        r = client.get(f"/api/v1/devices/{device_id}/assignment", headers=auth)
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        out[device_id] = version
        r = client.post(f"/api/v1/devices/{device_id}/telemetry", headers=auth, json={
            "idempotency_key": uuid.uuid4().hex, "model": "digits", "version": version,
            "window_start": (now - timedelta(seconds=5)).isoformat(),
            "window_end": now.isoformat(),
            "local_eval": {"n_examples": 50, "accuracy": accuracy[version]}})
        assert r.status_code in (200, 201), r.text
    return out


START = {"model": "digits", "candidate": 2,
         "steps": [{"percent": 50, "bake_s": 0}, {"percent": 100, "bake_s": 0}],
         "guards": [{"kind": "device_accuracy", "margin": 0.05, "min_samples": 40}]}


def test_start_read_list_history_and_refusals(fleet: tuple[Api, Any]) -> None:
    api, _ = fleet
    c = api.client
    assert c.post("/api/v1/rollouts", json=START).status_code == 401
    r = c.post("/api/v1/rollouts", json=START, headers=ADMIN)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["state"] == "running" and info["step"] == 0 and info["baseline"] == 1
    rid = info["id"]
    r = c.post("/api/v1/rollouts", json={**START, "candidate": 3}, headers=ADMIN)
    assert r.status_code == 409 and "active rollout" in r.json()["detail"]
    for bad in ({**START, "strategy": "ab"}, {**START, "candidate": 0},
                {**START, "steps": [{"percent": 50, "bake_s": 10, "timeout_s": 1}]},
                {**START, "guards": [{"kind": "vibes"}]}):
        r = c.post("/api/v1/rollouts", json=bad, headers=ADMIN)
        assert r.status_code == 422, (bad, r.text)
    assert c.post("/api/v1/rollouts", json={**START, "model": "nope"},
                  headers=ADMIN).status_code == 404
    assert c.get(f"/api/v1/rollouts/{rid}", headers=ADMIN).json()["id"] == rid
    assert c.get("/api/v1/rollouts/999", headers=ADMIN).status_code == 404
    assert c.get("/api/v1/rollouts/0", headers=ADMIN).status_code == 422
    page = c.get("/api/v1/rollouts?model=digits&active=true", headers=ADMIN).json()
    assert [i["id"] for i in page["items"]] == [rid] and page["total"] == 1
    assert c.get("/api/v1/rollouts?state=bogus", headers=ADMIN).status_code == 422
    history = c.get(f"/api/v1/rollouts/{rid}/history", headers=ADMIN).json()
    assert [e["kind"] for e in history] == ["start", "step"]
    assert c.post(f"/api/v1/rollouts/{rid}/approve", json={}, headers=ADMIN).status_code == 409
    r = c.post(f"/api/v1/rollouts/{rid}/abort", json={"reason": "enough"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "aborted"
    assert c.post(f"/api/v1/rollouts/{rid}/abort", json={}, headers=ADMIN).status_code == 409
    aliases = {a["alias"] for a in c.get("/api/v1/models/digits/aliases", headers=ADMIN).json()}
    assert aliases == {"production"}  # the rollout's canary is gone


def test_controller_promotes_over_the_assignment_route(fleet: tuple[Api, Any]) -> None:
    api, devices = fleet
    c = api.client
    poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.9})
    rid = c.post("/api/v1/rollouts", json=START, headers=ADMIN).json()["id"]
    ctl = controller(c)
    assert ctl.tick_all() == {rid: None}  # no candidate evidence yet
    ran = poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.9})
    assert 2 in ran.values()
    r = c.get("/api/v1/devices/d0/assignment", headers=devices["d0"]).json()
    assert r["alias"] in ("canary", "production")
    assert ctl.tick_all() == {rid: "advance"}
    assert set(poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.9}).values()) == {2}
    assert ctl.tick_all() == {rid: "advance"}
    info = c.get(f"/api/v1/rollouts/{rid}", headers=ADMIN).json()
    assert info["state"] == "promoted"
    assert api.client.get("/api/v1/models/digits/aliases/production",
                          headers=ADMIN).json()["version"] == 2
    assert ctl.tick_all() == {}


def test_bad_candidate_is_rolled_back_by_the_controller(fleet: tuple[Api, Any]) -> None:
    api, devices = fleet
    c = api.client
    poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.2})
    rid = c.post("/api/v1/rollouts", json={**START, "candidate": 3}, headers=ADMIN).json()["id"]
    poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.2})
    assert controller(c).tick_all() == {rid: "rollback"}
    history = c.get(f"/api/v1/rollouts/{rid}/history", headers=ADMIN).json()
    assert history[-1]["kind"] == "rollback" and "device_accuracy" in history[-1]["message"]
    assert set(poll_and_report(c, devices, {1: 0.9, 2: 0.9, 3: 0.2}).values()) == {1}


def test_rollout_cli(fleet: tuple[Api, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli import registry as cli
    from edgefleet_cli.main import app

    api, _ = fleet
    client = api.client
    # the app over ASGI, not a socket; lent, not entered: each CLI call's ``with`` would
    # start the app's lifespan again and leave the fixture's own one never shut down
    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    client.headers["X-Admin-Key"] = ADMIN["X-Admin-Key"]
    runner = CliRunner()
    out = runner.invoke(app, ["rollout", "start", "digits", "2", "--steps", "100", "--bake-s",
                              "0", "--guard", "device_accuracy:0.05:40", "--approval", "--json"])
    assert out.exit_code == 0, out.output
    rid = json.loads(out.output)["id"]
    out = runner.invoke(app, ["rollout", "start", "digits", "3"])
    assert out.exit_code == 1 and "409" in out.output
    out = runner.invoke(app, ["rollout", "start", "digits", "3", "--guard", "x:y"])
    assert out.exit_code != 0 and "kind[:margin" in out.output
    out = runner.invoke(app, ["rollout", "start", "digits", "3", "--guard", "bogus"])
    assert out.exit_code == 1 and out.output.startswith("error: 422 "), out.output
    assert len(out.output.strip().splitlines()) == 1 and '"loc"' not in out.output
    out = runner.invoke(app, ["rollout", "start", "digits", "3", "--guard",
                              "error_rate:0.02:50:everything"])  # the server names the choices
    assert out.exit_code == 1 and out.output.startswith("error: 422 ") and "'server'" in out.output
    out = runner.invoke(app, ["rollout", "status"])
    assert out.exit_code == 0 and out.output.split()[:3] == ["id", "model", "strategy"]
    assert f"\n{rid} " in out.output
    out = runner.invoke(app, ["rollout", "status", str(rid)])
    assert out.exit_code == 0 and "steps" in out.output and "running" in out.output
    out = runner.invoke(app, ["rollout", "approve", str(rid)])
    assert out.exit_code == 1 and "not awaiting approval" in out.output
    out = runner.invoke(app, ["rollout", "abort", str(rid), "--reason", "drill"])
    assert out.exit_code == 0 and "aborted" in out.output
    out = runner.invoke(app, ["rollout", "history", str(rid)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:3] == ["at", "kind", "from_state"]
    assert [ln.split()[1] for ln in lines[1:]] == ["start", "step", "abort"]
    out = runner.invoke(app, ["rollout", "history", str(rid), "--json"])
    assert json.loads(out.output)[-1]["message"] == "drill"
    assert runner.invoke(app, ["rollout", "status", "999"]).exit_code == 1


def test_assignment_carries_prefetch_and_it_may_be_downloaded(
        fleet: tuple[Api, Any]) -> None:
    api, devices = fleet
    c = api.client
    body = {"model": "digits", "candidate": 2, "strategy": "blue_green", "prefetch_devices": 1}
    rid = c.post("/api/v1/rollouts", json=body, headers=ADMIN).json()["id"]
    a = c.get("/api/v1/devices/d0/assignment", headers=devices["d0"]).json()
    assert a["version"] == 1 and a["rollout_id"] == rid and a["variant"] == "baseline"
    assert a["prefetch"]["version"] == 2 and a["shadow"] is None
    r = c.get(a["prefetch"]["weights"]["url"], headers=devices["d0"])
    assert r.status_code == 200 and len(r.content) == a["prefetch"]["weights"]["size"]
    r = c.get("/api/v1/models/digits/versions/3/weights", headers=devices["d0"])
    assert r.status_code == 403  # not assigned, not pre-downloaded


def test_federated_gate_starts_a_rollout(fleet: tuple[Api, Any]) -> None:
    from aggregation.publishing import GateSettings, Publisher
    from aggregation.registry_client import RegistryClient
    from aggregation.report import RoundReport
    from aggregation.rounds import RoundOutcome

    api, _ = fleet
    c = api.client
    with RegistryClient("http://testserver", ADMIN["X-Admin-Key"], retries=0,
                        transport=c._transport) as client:  # the app over ASGI
        manifest = client.manifest("digits", 1)
        weights = client.weights("digits", 1, manifest)
        gate = GateSettings(max_drop=0.02, action="rollout", rollout={
            "steps": [{"percent": 10, "bake_s": 30}, {"percent": 100, "bake_s": 30}]})
        publisher = Publisher(client, "digits", manifest, "run-r", parent_version=1,
                              strategy="fedavg", production_metrics={"accuracy": 0.9}, gate=gate)

        def outcome(rnd: int) -> RoundOutcome:
            report = RoundReport(rnd, status="ok", selected=[1], accepted=[1],
                                 metrics={"holdout.accuracy": 0.91})
            return RoundOutcome(report, weights, drift_scores={})

        first = publisher(outcome(1))
        page = c.get("/api/v1/rollouts?active=true", headers=ADMIN).json()
        assert [(i["candidate"], i["state"]) for i in page["items"]] == [(first, "running")]
        assert "federated gate" in page["items"][0]["reason"]
        canary = c.get("/api/v1/models/digits/aliases/canary", headers=ADMIN).json()
        assert (canary["version"], canary["rollout_percent"]) == (first, 10)
        second = publisher(outcome(2))  # an active rollout: published only
        assert second == first + 1
        page = c.get("/api/v1/rollouts", headers=ADMIN).json()
        assert page["total"] == 1


def test_a_new_controller_resumes_running_rollouts_once(fleet: tuple[Api, Any]) -> None:
    api, _ = fleet
    c = api.client
    rid = c.post("/api/v1/rollouts", json=START, headers=ADMIN).json()["id"]
    assert controller(c).tick_all() == {rid: None}  # started after the rollout: resumes it
    ctl = controller(c)
    ctl.tick_all()
    ctl.tick_all()
    kinds = [e["kind"] for e in c.get(f"/api/v1/rollouts/{rid}/history", headers=ADMIN).json()]
    assert kinds.count("resume") == 2  # one per controller (process), not one per tick
    assert kinds[:2] == ["start", "step"]
