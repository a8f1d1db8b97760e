"""Aliases over HTTP: READY-only, history, point-in-time answers, rollback."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.server.support import ADMIN, Api


def test_alias_moves_history_and_rollback(api: Api, client: TestClient) -> None:
    api.production()
    v2 = api.publish(
        full=False, weights=api.files.perturbed_weights(7), metadata={"plan_from_version": 1}
    )
    r = client.put(
        "/api/v1/models/digits/aliases/production",
        json={"version": v2, "reason": "better"},
        headers=ADMIN,
    )
    assert (
        r.status_code == 200
        and r.json()["version"] == 2
        and r.json()["updated_by"] == "admin:alice"
    )
    history = client.get("/api/v1/models/digits/aliases/production/history", headers=ADMIN).json()
    assert [(e["from_version"], e["to_version"]) for e in history["items"]] == [(1, 2), (None, 1)]
    first_at = history["items"][-1]["at"]
    r = client.get(
        "/api/v1/models/digits/aliases/production", params={"at": first_at}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["version"] == 1
    r = client.get(
        "/api/v1/models/digits/aliases/production",
        params={"at": "2000-01-01T00:00:00Z"},
        headers=ADMIN,
    )
    assert r.status_code == 404
    r = client.get(
        "/api/v1/models/digits/aliases/production",
        params={"at": "2030-01-01T00:00:00"},
        headers=ADMIN,
    )
    assert r.status_code == 422 and "time zone" in r.json()["detail"]
    r = client.post(
        "/api/v1/models/digits/aliases/production/rollback",
        json={"reason": "regression"},
        headers=ADMIN,
    )
    assert r.status_code == 200 and r.json()["version"] == 1
    everything = client.get("/api/v1/models/digits/alias-history", headers=ADMIN).json()
    assert everything["total"] == 3 and everything["items"][0]["reason"] == "regression"
    assert [
        a["alias"] for a in client.get("/api/v1/models/digits/aliases", headers=ADMIN).json()
    ] == ["production"]


def test_alias_errors(api: Api, client: TestClient) -> None:
    api.production()
    r = client.post("/api/v1/models/digits/aliases/production/rollback", json={}, headers=ADMIN)
    assert r.status_code == 409 and "no earlier" in r.json()["detail"]
    v2 = api.publish(
        full=False, weights=api.files.perturbed_weights(8), metadata={"plan_from_version": 1}
    )
    client.patch(f"/api/v1/models/digits/versions/{v2}", json={"status": "ARCHIVED"}, headers=ADMIN)
    r = api.alias("canary", v2)
    assert r.status_code == 409 and "not READY" in r.json()["detail"]
    assert api.alias("canary", 42).status_code == 404
    assert api.alias("production", 1, rollout_percent=20).status_code == 422
    assert api.alias("Bad Name", 1).status_code in (404, 422)
    assert api.alias("canary", 1, model="nope").status_code == 404
    assert api.alias("canary", 1, rollout_percent=101).status_code == 422
    assert client.delete("/api/v1/models/digits/aliases/canary", headers=ADMIN).status_code == 404
    assert api.alias("canary", 1).json()["rollout_percent"] == 10.0
    r = client.delete(
        "/api/v1/models/digits/aliases/canary", params={"reason": "done"}, headers=ADMIN
    )
    assert r.status_code == 204
    assert client.get("/api/v1/models/digits/aliases/canary", headers=ADMIN).status_code == 404
    assert (
        client.put("/api/v1/models/digits/aliases/canary", json={"version": 1}).status_code == 401
    )
