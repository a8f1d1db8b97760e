"""Rollouts as an operator watches them: the Prometheus rollout gauges and the dashboard's data.

A rollout started over REST shows as ``edgefleet_rollouts{state="running"}`` with its step in
``edgefleet_rollout_step``; once the controller promotes it, the gauges follow (no active
rollout left); the dashboard's overview carries it with its steps, guards and timeline, the
evidence of each decision included.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from server.metrics import FleetCollector
from tests.server.support import ADMIN, Api
from tests.server.test_rollouts_api import (  # noqa: F401  (fixtures)
    START,
    app_client,
    controller,
    fleet,
    poll_and_report,
)


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    collector: FleetCollector = client.app.state.fleet_collector  # type: ignore[attr-defined]
    collector.cache_s = 0  # every scrape recomputes
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if not line.startswith("edgefleet_rollout"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        pairs = tuple(sorted(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",")
                             if p)) if labels else ()
        out[(name, tuple((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def test_rollout_gauges_and_dashboard_panel(fleet: tuple[Api, Any]) -> None:  # noqa: F811
    api, devices = fleet
    client = api.client
    started = client.post("/api/v1/rollouts", json=START, headers=ADMIN)
    assert started.status_code == 201, started.text
    rid = str(started.json()["id"])
    s = samples(client)
    active_state = started.json()["state"]
    assert s[("edgefleet_rollouts", (("state", active_state),))] == 1
    assert s[("edgefleet_rollouts", (("state", "promoted"),))] == 0
    step = [v for (name, labels), v in s.items() if name == "edgefleet_rollout_step"]
    assert step == [0.0]
    labels = next(dict(lbl) for (name, lbl) in s if name == "edgefleet_rollout_step")
    assert labels == {"model": "digits", "rollout": rid, "strategy": "canary",
                      "state": active_state, "candidate": "2", "baseline": "1"}
    ctl = controller(client)
    for _ in range(6):
        poll_and_report(client, devices, {1: 0.80, 2: 0.82})
        ctl.tick_all()
        if client.get(f"/api/v1/rollouts/{rid}", headers=ADMIN).json()["state"] == "promoted":
            break
    assert client.get(f"/api/v1/rollouts/{rid}", headers=ADMIN).json()["state"] == "promoted"
    s = samples(client)
    assert s[("edgefleet_rollouts", (("state", "promoted"),))] == 1
    assert not [k for k in s if k[0] == "edgefleet_rollout_step"]  # nothing active
    overview = client.get("/dashboard/api/overview", headers=ADMIN)
    assert overview.status_code == 200, overview.text
    model = next(m for m in overview.json()["models"] if m["name"] == "digits")
    (panel,) = model["rollouts"]
    assert (panel["id"], panel["state"], panel["candidate"], panel["baseline"]) == (
        int(rid), "promoted", 2, 1)
    assert [s["percent"] for s in panel["steps"]] == [50, 100]
    assert [g["kind"] for g in panel["guards"]] == ["device_accuracy"]
    kinds = [e["kind"] for e in panel["timeline"]]
    assert kinds[0] == "start" or "start" in kinds[0], kinds
    judged = [e for e in panel["timeline"] if e["evidence"] and e["evidence"].get("guards")]
    assert judged and judged[-1]["evidence"]["guards"][0]["kind"] == "device_accuracy"
    assert client.get("/dashboard/api/overview").status_code == 401


def test_dashboard_page_has_the_rollouts_panel(app_client: TestClient) -> None:  # noqa: F811
    from server.dashboard import STATIC

    page = (STATIC / "index.html").read_text()
    script = (STATIC / "app.js").read_text()
    assert '<section id="rollouts">' in page and 'href="#rollouts"' in page
    assert "function renderRollouts" in script and "renderRollouts(data);" in script
