"""Models and versions over HTTP: uploads are verified, bad ones store nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet.plan import sha256_bytes, weights_to_bytes
from server.main import create_app
from server.settings import ServerSettings
from tests.server.support import ADMIN, Api, make_settings


def stored_blobs(settings: ServerSettings) -> list[Path]:
    root = Path(settings.artifact_dir)
    return [p for p in (root / "blobs").rglob("*") if p.is_file()]


def leftovers(settings: ServerSettings) -> list[Path]:
    return list((Path(settings.artifact_dir) / "tmp").iterdir())


def n_versions(client: TestClient, model: str = "digits") -> int:
    r = client.get(f"/api/v1/models/{model}/versions", headers=ADMIN)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def test_models_crud(api: Api, client: TestClient) -> None:
    r = api.create_model("digits", tags=["vision"], description="8x8")
    assert r.json()["tags"] == ["vision"] and r.json()["latest_version"] is None
    dup = client.post("/api/v1/models", json={"name": "digits"}, headers=ADMIN)
    assert dup.status_code == 409 and "already exists" in dup.json()["detail"]
    bad = client.post("/api/v1/models", json={"name": "../etc"}, headers=ADMIN)
    assert bad.status_code == 422
    r = client.patch("/api/v1/models/digits", json={"tags": ["a", "b"]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["tags"] == ["a", "b"]
    assert client.get("/api/v1/models/nope", headers=ADMIN).status_code == 404
    page = client.get("/api/v1/models", params={"tag": "a"}, headers=ADMIN).json()
    assert [m["name"] for m in page["items"]] == ["digits"] and page["total"] == 1


def test_upload_full_then_weights_only(
    api: Api, client: TestClient, settings: ServerSettings
) -> None:
    api.create_model()
    r = api.upload(metadata={"metrics": {"accuracy": 0.9}, "description": "first"})
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["status"] == "READY" and v1["created_by"] == "admin:alice"
    assert v1["plan"]["sha256"] == sha256_bytes(api.files.plan)
    assert v1["weights"]["sha256"] == sha256_bytes(api.files.weights)
    assert v1["manifest"]["url"] == "/api/v1/models/digits/versions/1/manifest"
    new = api.files.perturbed_weights(seed=3)
    r = api.upload(
        full=False,
        weights=new,
        metadata={
            "lineage": {
                "parent_version": 1,
                "federated_run": "r1",
                "federated_round": 1,
                "num_clients": 5,
                "strategy": "FedAvg",
            },
            "metrics": {"accuracy": 0.93},
        },
    )
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["plan"]["sha256"] == v1["plan"]["sha256"] and v2["lineage"]["parent_version"] == 1
    assert v2["weights"]["sha256"] == sha256_bytes(new)
    assert len(stored_blobs(settings)) == 4 and leftovers(settings) == []
    got = client.get("/api/v1/models/digits/versions/2", headers=ADMIN).json()
    assert got == v2
    found = client.get(
        "/api/v1/versions", params=[("metric", "accuracy>=0.92")], headers=ADMIN
    ).json()
    assert [v["version"] for v in found["items"]] == [2]
    assert (
        client.get("/api/v1/versions", params={"metric": "accuracy"}, headers=ADMIN).status_code
        == 422
    )
    model = client.get("/api/v1/models/digits", headers=ADMIN).json()
    assert model["latest_version"] == 2 and model["input_schema"]["shape"] == [None, 64]


def _bad_upload(api: Api, case: str):  # type: ignore[no-untyped-def]
    files = api.files
    if case == "wrong_plan_sha256":
        r = api.upload(declared={"plan_sha256": sha256_bytes(b"other")})
        return r, 400, "plan file: sha256 mismatch"
    if case == "wrong_weights_sha256":
        r = api.upload(declared={"weights_sha256": "0" * 64})
        return r, 400, "weights file: sha256 mismatch"
    if case == "wrong_manifest_sha256":
        return api.upload(declared={"manifest_sha256": "f" * 64}), 400, "manifest file: sha256"
    if case == "malformed_sha256":
        return api.upload(declared={"plan_sha256": "abc"}), 400, "plan file: the declared"
    if case == "corrupt_plan":
        half = len(files.plan) // 2
        plan = files.plan[:half] + b"\xff" * 300 + files.plan[half + 300 :]
        manifest = files.manifest_obj.model_copy(
            update={"plan_sha256": sha256_bytes(plan), "plan_size": len(plan)}
        )
        weights = weights_to_bytes(files.weights_arrays())
        r = api.upload(plan=plan, manifest=manifest.to_json().encode(), weights=weights)
        return r, 422, "plan does not load"
    if case == "truncated_plan":
        plan = files.plan[: len(files.plan) // 3]
        return api.upload(plan=plan), 422, "does not match its manifest"
    if case == "manifest_not_json":
        return api.upload(manifest=b"not json"), 422, "manifest rejected"
    if case == "weights_wrong_shape":
        arrays = files.weights_arrays()
        name = next(iter(arrays))
        arrays[name] = arrays[name][:1]
        return api.upload(weights=weights_to_bytes(arrays)), 422, "shape"
    if case == "missing_plan_digest":
        r = api.client.post(
            "/api/v1/models/digits/versions",
            files={
                "weights": ("w", files.weights),
                "plan": ("p", files.plan),
                "manifest": ("m", files.manifest),
            },
            data={"weights_sha256": sha256_bytes(files.weights)},
            headers=ADMIN,
        )
        return r, 422, "plan_sha256"
    if case == "bad_metadata":
        return api.upload(metadata={"metrics": {"accuracy": "high"}}), 422, "metadata"
    if case == "unknown_model":
        return api.upload("nope"), 404, "not found"
    if case == "no_plan_no_parent":
        return api.upload(full=False), 422, "no plan uploaded"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "wrong_plan_sha256",
        "wrong_weights_sha256",
        "wrong_manifest_sha256",
        "malformed_sha256",
        "corrupt_plan",
        "truncated_plan",
        "manifest_not_json",
        "weights_wrong_shape",
        "missing_plan_digest",
        "bad_metadata",
        "unknown_model",
        "no_plan_no_parent",
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(
    api: Api, client: TestClient, settings: ServerSettings, case: str
) -> None:
    api.create_model()
    r, status, message = _bad_upload(api, case)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert n_versions(client) == 0
    assert stored_blobs(settings) == [] and leftovers(settings) == []
    assert api.publish() == 1  # and the server keeps working


def test_oversized_upload_is_413_and_stores_nothing(
    db_url: str, tmp_path: Path, engine: object, plan_files: object
) -> None:
    settings = make_settings(db_url, tmp_path, max_upload_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        api = Api(client, plan_files)  # type: ignore[arg-type]
        api.create_model()
        r = api.upload()
        assert r.status_code == 413 and "exceeds" in r.json()["detail"]
        assert stored_blobs(settings) == [] and n_versions(client) == 0
        # an ordinary request is bound by the (smaller) request limit, not the upload limit
        big = client.post(
            "/api/v1/models",
            content=b"{" + b" " * 5_000_000 + b"}",
            headers={**ADMIN, "content-type": "application/json"},
        )
        assert big.status_code == 413


def test_status_changes(api: Api, client: TestClient) -> None:
    api.production()
    api.publish(
        full=False, weights=api.files.perturbed_weights(1), metadata={"plan_from_version": 1}
    )
    r = client.patch("/api/v1/models/digits/versions/1", json={"status": "ARCHIVED"}, headers=ADMIN)
    assert r.status_code == 409 and "move the alias" in r.json()["detail"]
    r = client.patch(
        "/api/v1/models/digits/versions/2",
        json={"status": "ARCHIVED", "reason": "x"},
        headers=ADMIN,
    )
    assert r.status_code == 200 and r.json()["status"] == "ARCHIVED"
    r = client.patch("/api/v1/models/digits/versions/2", json={"status": "PENDING"}, headers=ADMIN)
    assert r.status_code == 409
    r = client.patch("/api/v1/models/digits/versions/2", json={"status": "BOGUS"}, headers=ADMIN)
    assert r.status_code == 422
    listed = client.get("/api/v1/models/digits/versions", params={"status": "READY"}, headers=ADMIN)
    assert [v["version"] for v in listed.json()["items"]] == [1]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/models/{model}/versions",
        "/api/v1/devices/{device_id}/assignment",
        "/api/v1/devices/{device_id}/telemetry",
        "/api/v1/models/{model}/versions/{version}/weights",
        "/v2/models/{model}/infer",
        "/v2/health/ready",
    ):
        assert path in paths, path
    upload = paths["/api/v1/models/{model}/versions"]["post"]["requestBody"]
    assert "multipart/form-data" in upload["content"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"--xyz\r\nno-colon-header\r\n\r\n{}\r\n--xyz--\r\n", 400, "malformed multipart"),
        (b"--abc\r\n\r\n", 400, "malformed multipart"),
        (b"--xyzQ\r\n", 400, "malformed multipart"),
        (
            b'--xyz\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{}\r\n--xyz\x00',
            422,
            "weights file is required",
        ),
    ],
    ids=["bad_part_header", "wrong_boundary", "no_cr_after_boundary", "truncated_tail"],
)
def test_malformed_multipart_is_400_and_stores_nothing(
    api: Api,
    client: TestClient,
    settings: ServerSettings,
    body: bytes,
    status: int,
    message: str,
) -> None:
    api.create_model()
    r = client.post(
        "/api/v1/models/digits/versions",
        content=body,
        headers={**ADMIN, "content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert n_versions(client) == 0
    assert stored_blobs(settings) == [] and leftovers(settings) == []
    assert api.publish() == 1


@pytest.mark.parametrize(
    ("metadata", "status", "loc", "message"),
    [
        ('{"aliases": ["production"]}', 422, ["body", "metadata", "aliases"],
         "metadata.aliases: Extra inputs are not permitted"),
        ('{"metrics": {"accuracy": "high"}}', 422, ["body", "metadata", "metrics", "accuracy"],
         "metadata.metrics.accuracy: Input should be a valid number"),
        ("{", 400, ["body", "metadata"], "metadata: invalid JSON"),
    ],
)
def test_bad_metadata_is_the_usual_validation_answer(
    api: Api, client: TestClient, metadata: str, status: int, loc: list[str], message: str
) -> None:
    api.create_model()
    files = api.files
    r = client.post(
        "/api/v1/models/digits/versions",
        files={"weights": ("w", files.weights), "plan": ("p", files.plan)},
        data={
            "weights_sha256": sha256_bytes(files.weights),
            "plan_sha256": sha256_bytes(files.plan),
            "metadata": metadata,
        },
        headers=ADMIN,
    )
    assert r.status_code == status, r.text
    body = r.json()
    assert message in body["detail"] and "pydantic.dev" not in r.text
    assert "\n" not in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [loc]
    assert n_versions(client) == 0
