"""The serving snapshot for inference runners (``GET /api/v1/serving/models``) and what a runner
key may read: the snapshot and the artifacts of READY versions, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from edgefleet.serving import ServingSnapshot
from server.settings import ServerSettings
from tests.server.support import ADMIN, APP_KEY, Api, make_settings

RUNNER_SECRET = "runner-secret-1"
RUNNER = {"Authorization": f"Bearer {RUNNER_SECRET}"}
PATH = "/api/v1/serving/models"


@pytest.fixture
def settings(engine: Engine, db_url: str, tmp_path: Path) -> ServerSettings:
    return make_settings(db_url, tmp_path, runner_keys=[f"runners:{RUNNER_SECRET}"])


def test_snapshot_lists_models_aliases_versions_and_signatures(api: Api, client: TestClient
                                                               ) -> None:
    api.production()
    v2 = api.publish(full=False, weights=api.files.perturbed_weights(3),
                     metadata={"plan_from_version": 1})
    r = client.get(PATH, headers=RUNNER)
    assert r.status_code == 200, r.text
    snap = ServingSnapshot.model_validate(r.json())
    (model,) = snap.models
    assert model.name == "digits" and model.aliases == {"production": 1} and model.salt
    assert [(v.number, v.status) for v in model.versions] == [(1, "READY"), (v2, "READY")]
    info = client.get("/api/v1/models/digits/versions/1", headers=ADMIN).json()
    first = model.versions[0]
    assert first.weights.sha256 == info["weights"]["sha256"]
    assert first.weights.url == info["weights"]["url"]
    assert first.signature is not None and first.signature.signature == info["signature"][
        "signature"]
    assert first.signature.key_chain[0].public_key == info["signature"]["key_chain"][0][
        "public_key"]
    assert client.get(first.plan.url, headers=RUNNER).content == api.files.plan


def test_snapshot_etag_changes_with_an_alias_move(api: Api, client: TestClient) -> None:
    api.production()
    v2 = api.publish(full=False, weights=api.files.perturbed_weights(4),
                     metadata={"plan_from_version": 1})
    first = client.get(PATH, headers=RUNNER)
    etag = first.headers["etag"]
    unchanged = client.get(PATH, headers={**RUNNER, "If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert api.alias("production", v2).status_code == 200
    moved = client.get(PATH, headers={**RUNNER, "If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    assert moved.json()["models"][0]["aliases"] == {"production": v2}
    assert moved.json()["generation"] > first.json()["generation"]


def test_who_may_read_the_snapshot(api: Api, client: TestClient) -> None:
    api.production()
    device = api.enrol("dev-1")
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers={"Authorization": "Bearer wrong-secret-1"}).status_code == 401
    for headers in (device, {"Authorization": f"Bearer {APP_KEY}"}):
        r = client.get(PATH, headers=headers)
        assert r.status_code == 403 and "serving snapshot" in r.json()["detail"]
    assert client.get(PATH, headers=ADMIN).status_code == 200
    # a runner key is not an admin key: no registry API, no writes
    assert client.get("/api/v1/models", headers=RUNNER).status_code == 403
    r = client.put("/api/v1/models/digits/aliases/production", json={"version": 1},
                   headers=RUNNER)
    assert r.status_code == 403


def test_runners_get_artifacts_of_ready_versions_only(api: Api, client: TestClient) -> None:
    api.production()
    v2 = api.publish(full=False, weights=api.files.perturbed_weights(5),
                     metadata={"plan_from_version": 1})
    url = f"/api/v1/models/digits/versions/{v2}/weights"
    assert client.get(url, headers=RUNNER).status_code == 200
    r = client.patch(f"/api/v1/models/digits/versions/{v2}", json={"status": "ARCHIVED"},
                     headers=ADMIN)
    assert r.status_code == 200, r.text
    refused = client.get(url, headers=RUNNER)
    assert refused.status_code == 503 and "READY versions only" in refused.json()["detail"]
    assert client.get(url, headers=ADMIN).status_code == 200  # the operator still may
