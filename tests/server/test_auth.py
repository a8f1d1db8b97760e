"""Credentials and scopes: admin keys for the registry, device tokens scoped to their device."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.main import create_app
from tests.server.support import ADMIN, APP_KEY, ENROL_TOKEN, Api, make_settings


def test_registry_writes_need_the_admin_key(api: Api, client: TestClient) -> None:
    body = {"name": "digits"}
    r = client.post("/api/v1/models", json=body)
    assert r.status_code == 401 and "admin key is required" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/v1/models", json=body, headers={"X-Admin-Key": "wrong-key-123"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid admin key"
    r = client.post("/api/v1/models", json=body, headers={"Authorization": "Bearer admin-secret-1"})
    assert r.status_code == 201  # a bearer admin key works too
    device = api.enrol("pi-1", model=None)
    r = client.post("/api/v1/models", json={"name": "x"}, headers=device)
    assert r.status_code == 403 and "device credentials" in r.json()["detail"]
    app = {"Authorization": f"Bearer {APP_KEY}"}
    assert client.get("/api/v1/models", headers=app).status_code == 403
    r = client.get("/api/v1/models", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "malformed" in r.json()["detail"]
    r = api.upload(headers={})
    assert r.status_code == 401


def test_without_configured_keys_everything_is_refused(
    db_url: str, tmp_path: Path, engine: object
) -> None:
    settings = make_settings(db_url, tmp_path, admin_keys=[], enrollment_tokens=[])
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/models", json={"name": "x"}, headers=ADMIN)
        assert r.status_code == 401  # an unknown key is still an invalid key
        r = client.post("/api/v1/models", json={"name": "x"})
        assert r.status_code == 403 and "no admin key" in r.json()["detail"]
        r = client.post("/api/v1/devices/enroll", json={"enrollment_token": ENROL_TOKEN})
        assert r.status_code == 403 and "enrolment is disabled" in r.json()["detail"]


def test_enrolment_token_is_checked(client: TestClient) -> None:
    r = client.post("/api/v1/devices/enroll", json={"enrollment_token": "guess-guess"})
    assert r.status_code == 401 and "invalid enrolment token" in r.json()["detail"]
    r = client.post(
        "/api/v1/devices/enroll", json={"enrollment_token": ENROL_TOKEN, "device_id": "../x"}
    )
    assert r.status_code == 422


def test_device_tokens_are_scoped_to_their_device(api: Api, client: TestClient) -> None:
    api.production()
    api.publish(
        full=False, weights=api.files.perturbed_weights(4), metadata={"plan_from_version": 1}
    )
    a, b = api.enrol("dev-a"), api.enrol("dev-b")
    assert client.get("/api/v1/devices/dev-a/assignment", headers=a).status_code == 200
    r = client.get("/api/v1/devices/dev-a/assignment", headers=b)
    assert r.status_code == 403 and "does not belong to device 'dev-a'" in r.json()["detail"]
    assert client.get("/api/v1/devices/dev-a", headers=b).status_code == 403
    assert client.get("/api/v1/devices/dev-a", headers=a).json()["id"] == "dev-a"
    assert client.get("/api/v1/devices", headers=a).status_code == 403
    # artifacts: the assigned version yes, another version no, nothing without credentials
    assert client.get("/api/v1/models/digits/versions/1/weights", headers=a).status_code == 200
    r = client.get("/api/v1/models/digits/versions/2/weights", headers=a)
    assert r.status_code == 403 and "not assigned" in r.json()["detail"]
    assert client.get("/api/v1/models/digits/versions/2/weights", headers=ADMIN).status_code == 200
    r = client.get("/api/v1/models/digits/versions/1/plan")
    assert r.status_code == 401
    app = {"Authorization": f"Bearer {APP_KEY}"}
    assert client.get("/api/v1/models/digits/versions/1/plan", headers=app).status_code == 403
    # revoked and forged tokens
    assert client.delete("/api/v1/devices/dev-b", headers=ADMIN).json()["revoked"]
    r = client.get("/api/v1/devices/dev-b/assignment", headers=b)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    forged = {"Authorization": "Bearer efd_" + "x" * 43}
    assert client.get("/api/v1/devices/dev-a/assignment", headers=forged).status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/devices/dev-a/assignment", "/api/v1/devices/dev-a"])
def test_admin_may_act_for_a_device(api: Api, client: TestClient, path: str) -> None:
    api.production()
    api.enrol("dev-a")
    assert client.get(path, headers=ADMIN).status_code == 200


ENROL = "/api/v1/devices/enroll"


def test_the_enrolment_token_cannot_take_over_an_enrolled_device(
    api: Api, client: TestClient
) -> None:
    api.production()
    running = api.enrol("press-7")
    assert client.patch(
        "/api/v1/devices/press-7", json={"labels": {"site": "berlin"}}, headers=ADMIN
    ).status_code == 200
    body = {"enrollment_token": ENROL_TOKEN, "device_id": "press-7", "labels": {"site": "x"}}
    r = client.post(ENROL, json=body)
    assert r.status_code == 409
    assert "already enrolled" in r.json()["detail"] and "admin key" in r.json()["detail"]
    assert "device_token" not in r.text
    # the running device is untouched: its token works and its labels stay
    assert client.get("/api/v1/devices/press-7/assignment", headers=running).status_code == 200
    assert client.get("/api/v1/devices/press-7", headers=running).json()["labels"] == {
        "site": "berlin"
    }
    # a device token is no admin key: it cannot re-enrol (itself or another device) either
    assert client.post(ENROL, json=body, headers=running).status_code == 409
    # a revoked id stays revoked for the enrolment token too
    client.delete("/api/v1/devices/press-7", headers=ADMIN)
    assert client.post(ENROL, json=body).status_code == 409


def test_the_operator_re_enrols_a_re_imaged_device(api: Api, client: TestClient) -> None:
    api.production()
    old = api.enrol("press-7")
    client.patch("/api/v1/devices/press-7", json={"labels": {"site": "berlin"}}, headers=ADMIN)
    body = {"enrollment_token": ENROL_TOKEN, "device_id": "press-7"}
    r = client.post(ENROL, json=body, headers={"X-Admin-Key": "wrong-key-123"})
    assert r.status_code == 401
    r = client.post(ENROL, json={**body, "enrollment_token": "guess-guess"}, headers=ADMIN)
    assert r.status_code == 401  # the admin key adds the right to replace, not to skip the token
    r = client.post(ENROL, json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    new = {"Authorization": f"Bearer {r.json()['device_token']}"}
    assert r.json()["device_id"] == "press-7"
    assert client.get("/api/v1/devices/press-7/assignment", headers=old).status_code == 401
    assert client.get("/api/v1/devices/press-7/assignment", headers=new).status_code == 200
    device = client.get("/api/v1/devices/press-7", headers=ADMIN).json()
    assert device["labels"] == {"site": "berlin"} and device["model"] == "digits"
    r = client.post(ENROL, json={**body, "labels": {"site": "hamburg"}}, headers=ADMIN)
    assert r.status_code == 201
    assert client.get("/api/v1/devices/press-7", headers=ADMIN).json()["labels"] == {
        "site": "hamburg"
    }
