"""V2 inference: the protocol's shapes, the version that answered, every bad input, logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.runtime import PlanRuntime
from server.main import create_app
from tests.registry.support import PlanFiles
from tests.server.support import ADMIN, APP_KEY, Api, make_settings

APP = {"Authorization": f"Bearer {APP_KEY}"}


def tensor(data: Any, shape: list[int], datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.fixture
def served(api: Api) -> Api:
    api.production()
    return api


def test_infer_matches_the_plan_runtime(served: Api, client: TestClient, digits_data) -> None:  # type: ignore[no-untyped-def]
    x = np.asarray(digits_data.x_test[:5], dtype=np.float32)
    r = client.post(
        "/v2/models/digits/infer",
        json={"id": "req-1", **tensor(x.ravel().tolist(), [5, 64])},
        headers=APP,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1" and body["id"] == "req-1"
    assert body["parameters"] == {"alias": "production"}
    probs, labels = body["outputs"]
    assert (
        probs["name"] == "probabilities"
        and probs["shape"] == [5, 10]
        and probs["datatype"] == "FP32"
    )
    files: PlanFiles = served.files
    runtime = PlanRuntime.from_bytes(files.plan, files.manifest_obj, files.weights_arrays())
    want = runtime.predict(x)
    np.testing.assert_allclose(np.asarray(probs["data"]).reshape(5, 10), want, rtol=1e-5, atol=1e-6)
    assert labels["data"] == [str(i) for i in want.argmax(axis=1)]
    nested = client.post("/v2/models/digits/infer", json=tensor(x.tolist(), [5, 64]), headers=APP)
    assert nested.json()["outputs"] == body["outputs"]
    ints = client.post(
        "/v2/models/digits/infer",
        json=tensor(x.astype(int).ravel().tolist(), [5, 64], "INT32"),
        headers=APP,
    )
    assert ints.status_code == 200
    only = client.post(
        "/v2/models/digits/infer",
        json={**tensor([0] * 64, [1, 64]), "outputs": [{"name": "label"}]},
        headers=APP,
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["label"]


def test_versions_and_aliases_choose_who_answers(served: Api, client: TestClient) -> None:
    v2 = served.publish(
        full=False,
        weights=served.files.perturbed_weights(9, 0.5),
        metadata={"plan_from_version": 1},
    )
    body = tensor([1.0] * 64, [1, 64])
    r = client.post(f"/v2/models/digits/versions/{v2}/infer", json=body, headers=APP)
    assert r.json()["model_version"] == "2" and "parameters" not in r.json()
    assert (
        client.post("/v2/models/digits/infer", json=body, headers=APP).json()["model_version"]
        == "1"
    )
    served.alias("production", v2)
    assert (
        client.post("/v2/models/digits/infer", json=body, headers=APP).json()["model_version"]
        == "2"
    )


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("invalid_json", 400, "Invalid JSON"),
        ("not_an_object", 400, "invalid request"),
        ("no_inputs", 400, "inputs"),
        ("wrong_shape", 400, "does not fit the model"),
        ("count_mismatch", 400, "needs 64"),
        ("ragged", 400, "regular"),
        ("strings", 400, "non-numeric"),
        ("numeric_strings", 400, "non-numeric"),
        ("booleans", 400, "booleans"),
        ("fp32_with_some_booleans", 400, "booleans"),
        ("nested_booleans", 400, "booleans"),
        ("bytes_type", 400, "not supported"),
        ("bad_datatype", 400, "datatype"),
        ("nan", 400, "NaN"),
        ("wrong_name", 400, "unknown input"),
        ("two_inputs", 400, "exactly one"),
        ("batch_too_large", 400, "batch size"),
        ("zero_batch", 400, "batch size"),
        ("unknown_output", 400, "unknown output"),
        ("unknown_model", 404, "not found"),
        ("unknown_version", 404, "no version 7"),
        ("non_numeric_version", 404, "unknown version"),
    ],
)
def test_bad_requests_get_protocol_errors(
    served: Api, client: TestClient, case: str, status: int, message: str
) -> None:
    url, raw = "/v2/models/digits/infer", None
    body: Any = None
    good = tensor([0.5] * 64, [1, 64])
    if case == "invalid_json":
        raw = b'{"inputs": [}'
    elif case == "not_an_object":
        body = [1, 2, 3]
    elif case == "no_inputs":
        body = {"id": "x"}
    elif case == "wrong_shape":
        body = tensor([0.5] * 64, [64])
    elif case == "count_mismatch":
        body = tensor([0.5] * 60, [1, 64])
    elif case == "ragged":
        body = tensor([[0.5] * 64, [0.5] * 63], [2, 64])
    elif case == "strings":
        body = tensor(["a"] * 64, [1, 64])
    elif case == "numeric_strings":
        body = tensor(["1.5"] * 64, [1, 64])
    elif case == "booleans":
        body = tensor([True] * 64, [1, 64])
    elif case == "fp32_with_some_booleans":
        body = tensor([True, False] + [0.5] * 62, [1, 64])
    elif case == "nested_booleans":
        body = tensor([[0.5] * 63 + [True]], [1, 64])
    elif case == "bytes_type":
        body = tensor([0] * 64, [1, 64], "BYTES")
    elif case == "bad_datatype":
        body = tensor([0] * 64, [1, 64], "FLOAT")
    elif case == "nan":
        raw = (
            '{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [NaN'
            + ", 0" * 63
            + "]}]}"
        ).encode()
    elif case == "wrong_name":
        body = tensor([0.5] * 64, [1, 64], name="pixels")
    elif case == "two_inputs":
        body = {"inputs": good["inputs"] * 2}
    elif case == "batch_too_large":
        body = tensor([0.0] * 64 * 1025, [1025, 64])
    elif case == "zero_batch":
        body = tensor([], [0, 64])
    elif case == "unknown_output":
        body = {**good, "outputs": [{"name": "logits"}]}
    elif case == "unknown_model":
        url, body = "/v2/models/nope/infer", good
    elif case == "unknown_version":
        url, body = "/v2/models/digits/versions/7/infer", good
    else:
        url, body = "/v2/models/digits/versions/latest/infer", good
    if raw is not None:
        r = client.post(url, content=raw, headers={**APP, "content-type": "application/json"})
    else:
        r = client.post(url, json=body, headers=APP)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"]
    # and the server keeps serving
    ok = client.post("/v2/models/digits/infer", json=good, headers=APP)
    assert ok.status_code == 200


def test_oversized_request_is_413(
    db_url: str, tmp_path: Path, engine: object, plan_files: PlanFiles
) -> None:
    settings = make_settings(db_url, tmp_path, max_request_bytes=10_000)
    with TestClient(create_app(settings)) as client:
        Api(client, plan_files).production()
        r = client.post(
            "/v2/models/digits/infer", json=tensor([0.123456789] * 64 * 40, [40, 64]), headers=APP
        )
        assert r.status_code == 413 and "exceeds" in r.json()["error"]

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(20):
                yield b" " * 1000

        r = client.post(  # no Content-Length: counted while reading
            "/v2/models/digits/infer",
            content=chunks(),
            headers={**APP, "content-type": "application/json"},
        )
        assert r.status_code == 413 and "exceeds" in r.json()["error"]
        assert (
            client.post(
                "/v2/models/digits/infer", json=tensor([0] * 64, [1, 64]), headers=APP
            ).status_code
            == 200
        )


def test_metadata_readiness_and_health(served: Api, client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/api/v1/health/live").json() == {"status": "ok"}
    assert client.get("/api/v1/health/ready").json()["status"] == "ready"
    assert client.get("/v2", headers=APP).json()["name"] == "edgefleet"
    meta = client.get("/v2/models/digits", headers=APP).json()
    assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "tflite"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert (
        client.get("/v2/models/digits/versions/1", headers=APP).json()["parameters"]["version"]
        == "1"
    )
    assert client.get("/v2/models/digits/ready", headers=APP).json()["ready"] is True
    assert client.get("/v2/models/digits/versions/1/ready", headers=APP).status_code == 200
    assert client.get("/v2/models/digits/versions/3/ready", headers=APP).status_code == 404
    assert client.get("/v2/models/nope", headers=APP).json() == {"error": "model 'nope' not found"}


def test_inference_needs_credentials(served: Api, client: TestClient) -> None:
    body = tensor([0] * 64, [1, 64])
    r = client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 401 and "inference key" in r.json()["error"]
    assert (
        client.post(
            "/v2/models/digits/infer", json=body, headers={"Authorization": "Bearer nope-nope"}
        ).status_code
        == 401
    )
    device = served.enrol("pi-1")
    assert client.post("/v2/models/digits/infer", json=body, headers=device).status_code == 200
    assert client.post("/v2/models/digits/infer", json=body, headers=ADMIN).status_code == 200


def test_every_request_leaves_a_log_record(
    served: Api, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgefleet.server.access")
    r = client.post(
        "/v2/models/digits/infer",
        json=tensor([0] * 64, [1, 64]),
        headers={**APP, "X-Request-ID": "trace-42"},
    )
    assert r.headers["x-request-id"] == "trace-42"
    client.post("/v2/models/digits/infer", json=tensor([0] * 3, [1, 3]), headers=APP)
    records = [rec for rec in caplog.records if rec.name == "edgefleet.server.access"]
    ok, bad = records[-2], records[-1]
    assert ok.request_id == "trace-42" and ok.status == 200 and ok.caller == "app:shop"  # type: ignore[attr-defined]
    assert ok.model == "digits" and ok.model_version == 1 and ok.latency_ms >= 0  # type: ignore[attr-defined]
    assert bad.status == 400 and len(bad.request_id) == 32  # type: ignore[attr-defined]


def test_a_version_whose_artifacts_vanished_is_503(
    served: Api, client: TestClient, settings: object
) -> None:
    from edgefleet.plan import sha256_bytes

    root = Path(settings.artifact_dir) / "blobs"  # type: ignore[attr-defined]
    weights = next(p for p in root.rglob(sha256_bytes(served.files.weights)))
    weights.chmod(0o644)
    weights.unlink()
    r = client.post("/v2/models/digits/infer", json=tensor([0] * 64, [1, 64]), headers=APP)
    assert r.status_code == 503 and "cannot be loaded" in r.json()["error"]
    assert client.get("/v2/health/live").status_code == 200
