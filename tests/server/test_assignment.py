"""Assignment polls and artifact downloads: conditional requests, stickiness, content."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from edgefleet.plan import sha256_bytes
from tests.server.support import ADMIN, Api


def test_assignment_is_conditional_and_follows_aliases(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    r = client.get("/api/v1/devices/pi-1/assignment", headers=dev)
    assert r.status_code == 200
    body, etag = r.json(), r.headers["etag"]
    assert body["version"] == 1 and body["alias"] == "production" and body["model"] == "digits"
    assert body["weights"]["sha256"] == sha256_bytes(api.files.weights)
    r = client.get("/api/v1/devices/pi-1/assignment", headers={**dev, "If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    v2 = api.publish(
        full=False, weights=api.files.perturbed_weights(1), metadata={"plan_from_version": 1}
    )
    assert api.alias("production", v2).status_code == 200
    r = client.get("/api/v1/devices/pi-1/assignment", headers={**dev, "If-None-Match": etag})
    assert r.status_code == 200 and r.json()["version"] == 2 and r.headers["etag"] != etag
    device = client.get("/api/v1/devices/pi-1", headers=ADMIN).json()
    assert device["assigned_version"] == 2 and device["last_seen_at"] is not None


def test_canary_share_is_sticky_per_device(api: Api, client: TestClient) -> None:
    api.production()
    v2 = api.publish(
        full=False, weights=api.files.perturbed_weights(2), metadata={"plan_from_version": 1}
    )
    assert api.alias("canary", v2, rollout_percent=50).json()["rollout_percent"] == 50
    tokens = {f"d{i:02d}": api.enrol(f"d{i:02d}") for i in range(24)}

    def poll() -> dict[str, tuple[int, str]]:
        out = {}
        for device_id, headers in tokens.items():
            j = client.get(f"/api/v1/devices/{device_id}/assignment", headers=headers).json()
            out[device_id] = (j["version"], j["alias"])
        return out

    first = poll()
    assert first == poll()
    assert {v for v, _ in first.values()} == {1, 2}
    assert all((v == 2) == (a == "canary") for v, a in first.values())


def test_no_production_yet_is_404(api: Api, client: TestClient) -> None:
    api.create_model()
    dev = api.enrol("pi-1")
    r = client.get("/api/v1/devices/pi-1/assignment", headers=dev)
    assert r.status_code == 404 and "no production version" in r.json()["detail"]
    r = client.get("/api/v1/devices/pi-1/assignment", headers=dev, params={"model": "nope"})
    assert r.status_code == 404


@pytest.mark.parametrize("kind", ["plan", "weights", "manifest"])
def test_downloads_stream_with_etag_and_304(api: Api, client: TestClient, kind: str) -> None:
    api.production()
    dev = api.enrol("pi-1")
    client.get("/api/v1/devices/pi-1/assignment", headers=dev)
    want = {"plan": api.files.plan, "weights": api.files.weights, "manifest": api.files.manifest}[
        kind
    ]
    url = f"/api/v1/models/digits/versions/1/{kind}"
    r = client.get(url, headers=dev)
    assert r.status_code == 200 and r.content == want
    tag = f'"{sha256_bytes(want)}"'
    assert r.headers["etag"] == tag and "immutable" in r.headers["cache-control"]
    for header in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        r = client.get(url, headers={**dev, "If-None-Match": header})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
    r = client.get(url, headers={**dev, "If-None-Match": '"0000"'})
    assert r.status_code == 200 and r.content == want
    r = client.get(url, headers={**dev, "Range": "bytes=10-19"})  # a resumed download
    assert r.status_code == 206 and r.content == want[10:20]


def test_unknown_versions_and_missing_blobs(api: Api, client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    api.production()
    assert client.get("/api/v1/models/digits/versions/9/plan", headers=ADMIN).status_code == 404
    assert client.get("/api/v1/models/nope/versions/1/plan", headers=ADMIN).status_code == 404
    assert client.get("/api/v1/models/digits/versions/x/plan", headers=ADMIN).status_code == 422
    from pathlib import Path

    blob = Path(settings.artifact_dir) / "blobs" / "sha256"
    path = next(
        p for p in blob.rglob("*") if p.is_file() and p.name == sha256_bytes(api.files.plan)
    )
    path.chmod(0o644)
    path.unlink()
    r = client.get("/api/v1/models/digits/versions/1/plan", headers=ADMIN)
    assert r.status_code == 503 and "missing" in r.json()["detail"]
