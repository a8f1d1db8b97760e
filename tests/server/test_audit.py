"""The audit trail over HTTP: who did what (the caller's name, never a secret), request ids,
failed requests leave nothing, filters and paging, verify, restarts (SQLite and PostgreSQL)."""

from __future__ import annotations

import warnings
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from server.main import create_app
from server.settings import ServerSettings
from tests.registry.support import PlanFiles
from tests.server.support import ADMIN, ENROL_TOKEN, Api

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

AUDIT = "/api/v1/audit"


def trail(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get(AUDIT, params={"limit": 500, **params}, headers=ADMIN)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def last_seq(client: TestClient) -> int:
    items = trail(client, order="desc", limit=1)
    return int(items[0]["seq"]) if items else 0


def since(client: TestClient, seq: int) -> list[tuple[str, str, str]]:
    return [(r["action"], r["actor"], r["target"]) for r in trail(client, after_seq=seq)]


def test_each_action_over_http_writes_one_record_as_the_caller(api: Api) -> None:
    c = api.client
    start = last_seq(c)
    api.create_model()
    v1 = api.publish()
    assert since(c, start) == [("model.create", "admin:alice", "digits"),
                               ("version.publish", "admin:alice", f"digits/{v1}")]
    seq = last_seq(c)
    r = c.patch("/api/v1/models/digits", json={"description": "8x8 digits"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert since(c, seq) == [("model.update", "admin:alice", "digits")]
    seq = last_seq(c)
    r = c.put("/api/v1/models/digits/aliases/production", json={"version": v1},
              headers={**ADMIN, "X-Request-ID": "req-move-1"})
    assert r.status_code == 200
    moved = trail(c, after_seq=seq)
    assert [(m["action"], m["actor"], m["request_id"]) for m in moved] == [
        ("alias.move", "admin:alice", "req-move-1")]
    seq = last_seq(c)
    api.enrol("pi-1")
    ((action, actor, target),) = since(c, seq)
    assert (action, target) == ("device.enrol", "device/pi-1")
    assert actor.startswith("enrolment:enrol-") and ENROL_TOKEN not in actor
    seq = last_seq(c)
    r = c.patch("/api/v1/devices/pi-1", json={"labels": {"site": "b"}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert since(c, seq) == [("device.update", "admin:alice", "device/pi-1")]
    seq = last_seq(c)
    assert c.delete("/api/v1/devices/pi-1", headers=ADMIN).status_code == 200
    v2 = api.publish(full=False, weights=api.files.perturbed_weights(1),
                     metadata={"plan_from_version": v1})
    r = c.patch(f"/api/v1/models/digits/versions/{v2}", json={"status": "ARCHIVED"},
                headers=ADMIN)
    assert r.status_code == 200, r.text
    assert since(c, seq) == [
        ("device.revoke", "admin:alice", "device/pi-1"),
        ("version.publish", "admin:alice", f"digits/{v2}"),
        ("version.archive", "admin:alice", f"digits/{v2}"),
    ]


def test_federated_run_events_are_recorded_as_the_calling_key(api: Api) -> None:
    c = api.client
    api.create_model()
    seq = last_seq(c)
    body = {"model": "digits", "run": "digits-fl-7", "event": "start", "rounds": 3,
            "detail": {"strategy": "fedavg"}}
    r = c.post(f"{AUDIT}/runs", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["after"] == {"outcome": "running", "rounds": 3, "strategy": "fedavg"}
    end = {**body, "event": "end", "outcome": "completed", "detail": {"published": [2, 3]}}
    assert c.post(f"{AUDIT}/runs", json=end, headers=ADMIN).status_code == 201
    assert since(c, seq) == [("run.start", "admin:alice", "digits/run/digits-fl-7"),
                             ("run.end", "admin:alice", "digits/run/digits-fl-7")]


def test_refused_requests_leave_no_record(api: Api) -> None:
    c = api.client
    api.production()
    seq = last_seq(c)
    refused = [
        c.put("/api/v1/models/digits/aliases/canary", json={"version": 9}, headers=ADMIN),
        c.put("/api/v1/models/digits/aliases/canary", json={"version": 1}),  # no key
        c.patch("/api/v1/models/digits/versions/1", json={"status": "ARCHIVED"}, headers=ADMIN),
        c.post("/api/v1/devices/enroll", json={"enrollment_token": "wrong", "device_id": "x"}),
        c.delete("/api/v1/devices/nobody", headers=ADMIN),
        c.post(f"{AUDIT}/runs", json={"model": "nope", "run": "r", "event": "start"},
               headers=ADMIN),
        c.post(f"{AUDIT}/runs", json={"model": "digits", "run": "r", "event": "begin"},
               headers=ADMIN),
        c.post(f"{AUDIT}/runs", json={"model": "digits", "run": "r", "event": "start"}),
    ]
    assert [r.status_code for r in refused] == [404, 401, 409, 401, 404, 404, 422, 401]
    assert since(c, seq) == []


def test_listing_filters_pages_and_refuses_bad_queries(api: Api) -> None:
    c = api.client
    api.production()
    for v in (2, 3):
        api.publish(full=False, weights=api.files.perturbed_weights(v),
                    metadata={"plan_from_version": 1})
    publishes = trail(c, action="version.*")
    assert [r["target"] for r in publishes] == ["digits/1", "digits/2", "digits/3"]
    first = c.get(AUDIT, params={"action": "version.publish", "limit": 2}, headers=ADMIN).json()
    assert [r["target"] for r in first["items"]] == ["digits/1", "digits/2"]
    rest = c.get(AUDIT, params={"action": "version.publish", "limit": 2,
                                "after_seq": first["next_after_seq"]}, headers=ADMIN).json()
    assert [r["target"] for r in rest["items"]] == ["digits/3"] and rest["next_after_seq"] is None
    assert [r["target"] for r in trail(c, target="digits/*", actor="admin:alice",
                                       order="desc", action="version.publish")] == [
        "digits/3", "digits/2", "digits/1"]
    assert trail(c, actor="admin:mallory") == []
    assert c.get(AUDIT).status_code == 401
    for bad in ({"limit": 0}, {"since": "yesterday"}, {"order": "sideways"},
                {"after_seq": -1}, {"action": "x\x00"}):
        assert c.get(AUDIT, params=bad, headers=ADMIN).status_code == 422, bad


def test_verify_finds_tampering_and_the_trail_survives_a_restart(
    engine: Engine, settings: ServerSettings, plan_files: PlanFiles
) -> None:
    with TestClient(create_app(settings)) as c:
        Api(c, plan_files).production()
        ok = c.get(f"{AUDIT}/verify", headers=ADMIN).json()
        assert ok["ok"] and ok["checked"] == ok["head_seq"] >= 3
        before = trail(c)
    with TestClient(create_app(settings)) as again:  # a restart on the same database
        assert trail(again)[: len(before)] == before
        assert again.get(f"{AUDIT}/verify", headers=ADMIN).json()["ok"]
        target = next(r for r in before if r["action"] == "alias.move")
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_record SET reason = 'nothing to see' "
                                 "WHERE seq = :s"), {"s": target["seq"]})
        report = again.get(f"{AUDIT}/verify", headers=ADMIN).json()
        assert not report["ok"]
        assert [(p["seq"], p["kind"]) for p in report["problems"]] == [
            (target["seq"], "altered")]
        publish = next(r for r in before if r["action"] == "version.publish")
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_record WHERE seq = :s"),
                         {"s": publish["seq"]})
        kinds = {(p["seq"], p["kind"])
                 for p in again.get(f"{AUDIT}/verify", headers=ADMIN).json()["problems"]}
        assert (publish["seq"], "missing") in kinds


def test_settings_changes_are_recorded_once_per_change(
    engine: Engine, settings: ServerSettings
) -> None:
    def settings_records(client: TestClient) -> list[dict[str, Any]]:
        return trail(client, action="settings.change")

    with TestClient(create_app(settings)) as c:
        first = settings_records(c)
    assert len(first) == 1 and first[0]["actor"] == "system:server-start"
    assert first[0]["after"]["admin_keys.names"] == ["alice"]
    assert "admin-secret-1" not in str(first[0])
    with TestClient(create_app(settings)) as c:  # same settings: nothing new
        assert settings_records(c) == first
    changed = settings.model_copy(update={"canary_rollout_percent": 25.0})
    with TestClient(create_app(changed)) as c:
        records = settings_records(c)
    assert len(records) == 2
    assert records[1]["before"]["canary_rollout_percent"] == 10.0
    assert records[1]["after"]["canary_rollout_percent"] == 25.0
    assert records[1]["reason"] == "changed: canary_rollout_percent"


def test_rollout_actions_are_recorded_as_the_operator(api: Api) -> None:
    c = api.client
    v1 = api.production()
    v2 = api.publish(full=False, weights=api.files.perturbed_weights(4),
                     metadata={"plan_from_version": v1})
    seq = last_seq(c)
    r = c.post("/api/v1/rollouts", headers=ADMIN, json={
        "model": "digits", "candidate": v2, "strategy": "canary",
        "steps": [{"percent": 10, "bake_s": 0, "timeout_s": 600}]})
    assert r.status_code == 201, r.text
    rollout = r.json()["id"]
    assert c.post(f"/api/v1/rollouts/{rollout}/abort", headers=ADMIN,
                  json={"reason": "not today"}).status_code == 200
    assert c.post(f"/api/v1/rollouts/{rollout}/abort", headers=ADMIN,
                  json={"reason": "again"}).status_code == 409  # ended: nothing recorded
    got = [(a, actor, t) for a, actor, t in since(c, seq) if a.startswith("rollout.")]
    target = f"digits/rollouts/{rollout}"
    assert got == [(f"rollout.{a}", "admin:alice", target) for a in ("start", "step", "abort")]
