"""The raw-body V2 route: any Content-Type, binary tensors both ways, one error shape.

The route reads the body itself (no JSON body model), so what tritonclient sends by default is
accepted: JSON without ``Content-Type``, or JSON and binary tensor data after
``Inference-Header-Content-Length`` bytes. Every refusal stays a 4xx with ``{"error": ...}``,
also when invalid bodies arrive among concurrent valid ones, which still get their own answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from server.main import create_app
from server.settings import ServerSettings
from tests.registry.support import PlanFiles
from tests.server.support import APP_KEY, Api

APP = {"Authorization": f"Bearer {APP_KEY}"}
URL = "/v2/models/digits/infer"


@pytest.fixture
def served(api: Api) -> Api:
    api.production()
    return api


def _expected(files: PlanFiles, x: np.ndarray) -> np.ndarray:
    manifest = PlanManifest.from_json(files.manifest)
    runtime = PlanRuntime.from_bytes(files.plan, manifest,
                                     weights_from_bytes(files.weights, manifest=manifest))
    return runtime.predict(x)


def _json_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_json_is_read_whatever_the_content_type(
    served: Api, client: TestClient, plan_files: PlanFiles, digits_data, content_type: str | None  # type: ignore[no-untyped-def]
) -> None:
    x = np.asarray(digits_data.x_test[:3], dtype=np.float32)
    headers = dict(APP)
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = client.post(URL, content=_json_body(x), headers=headers)
    assert r.status_code == 200, r.text
    probs = next(o for o in r.json()["outputs"] if o["datatype"] == "FP32")
    np.testing.assert_allclose(np.asarray(probs["data"]).reshape(3, -1), _expected(plan_files, x),
                               rtol=1e-5, atol=1e-6)


def test_binary_tensor_data_in_and_out(
    served: Api, client: TestClient, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    x = np.asarray(digits_data.x_test[:4], dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    head = json.dumps({
        "id": "bin-1",
        "inputs": [{"name": "x", "shape": [4, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    r = client.post(URL, content=head + raw, headers={
        **APP, "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:length])
    assert meta["id"] == "bin-1" and meta["model_version"] == "1"
    (out,) = meta["outputs"]
    assert out["shape"] == [4, 10] and out["parameters"]["binary_data_size"] == 4 * 10 * 4
    probs = np.frombuffer(r.content[length:], dtype="<f4").reshape(4, 10)
    np.testing.assert_allclose(probs, _expected(plan_files, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("url", "headers", "body", "status"),
    [
        (URL, {}, None, 401),
        (URL, {"Authorization": "Bearer efd_not-a-token"}, None, 401),
        (URL, APP, b"{nope", 400),
        (URL, {**APP, "Inference-Header-Content-Length": "999999"}, None, 400),
        ("/v2/models/nope/infer", APP, None, 404),
        ("/v2/models/digits/versions/9/infer", APP, None, 404),
    ],
)
def test_every_refusal_is_a_4xx_with_the_protocols_error(
    served: Api, client: TestClient, url: str, headers: dict[str, str], body: bytes | None,
    status: int,
) -> None:
    good = _json_body(np.zeros((1, 64), dtype=np.float32))
    r = client.post(url, content=good if body is None else body, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]
    assert client.post(URL, content=good, headers=APP).status_code == 200


def test_the_hot_path_reads_no_database(served: Api, client: TestClient) -> None:
    """Once a model and a device token were seen, requests run no SQL (only the inference
    log's writer, the serving table's refresh thread and the rollout controller's periodic
    tick talk to the database)."""
    device = served.enrol("pi-hot")
    good = _json_body(np.zeros((1, 64), dtype=np.float32))
    for headers in (APP, device):  # the model is loaded and the token checked once
        assert client.post(URL, content=good, headers=headers).status_code == 200
    engine = client.app.state.edgefleet.engine  # type: ignore[attr-defined]
    background = {"inference-log", "edgefleet-serving-table", "edgefleet-rollouts"}
    seen: list[tuple[str, str]] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((threading.current_thread().name, statement))

    event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(10):
            for headers in (APP, device):
                assert client.post(URL, content=good, headers=headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [s for thread, s in seen if thread not in background] == []


def _invalid_bodies() -> list[tuple[bytes, dict[str, str]]]:
    """Bodies every endpoint refuses with 400, each with its extra headers."""
    row = np.zeros((1, 64), dtype=np.float32)
    nan = json.loads(_json_body(row))
    nan["inputs"][0]["data"][3] = "NaN"
    framed = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    return [
        (_json_body(np.zeros((1, 63), dtype=np.float32)), {}),  # wrong width
        (json.dumps(nan).encode().replace(b'"NaN"', b"NaN"), {}),
        (json.dumps({"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP32",
                                 "data": [0.5]}]}).encode(), {}),
        (json.dumps({"inputs": [{"name": "x", "shape": [True, 64], "datatype": "FP32",
                                 "data": [0.5] * 64}]}).encode(), {}),
        (framed + row.tobytes(), {"Inference-Header-Content-Length": str(len(framed) - 2)}),
        (_json_body(row)[:-3], {}),
    ]


def test_invalid_bodies_among_concurrent_valid_ones_get_400_and_the_others_their_answers(
    served: Api, settings: ServerSettings, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    pool = np.asarray(digits_data.x_test, dtype=np.float32)
    xs = [pool[i : i + 1 + i % 4] for i in range(36)]  # 1 to 4 rows each
    invalid = _invalid_bodies() * 2
    batching = {"default": {"max_batch": 16, "max_queue_delay_ms": 10, "inline_below_ms": 0}}
    app = create_app(settings.model_copy(update={"batching": batching}))
    # valid and invalid requests interleaved in one gather: in flight together
    calls: list[tuple[str | None, bytes, dict[str, str]]] = []
    for i, x in enumerate(xs):
        payload = json.loads(_json_body(x))
        calls.append((f"r{i}", json.dumps({"id": f"r{i}", **payload}).encode(), {}))
        if i % 3 == 0 and invalid:
            calls.append((None, *invalid.pop()))

    async def run() -> tuple[list[httpx.Response], int]:
        state = app.state.edgefleet
        state.serving.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                responses = await asyncio.gather(*(
                    client.post(URL, content=content, headers={**APP, **headers})
                    for _, content, headers in calls))
            batchers = [state.serving.pool.cached(k) for k in state.serving.pool.cached_keys()]
            return responses, sum(b.stats.batched_calls for b in batchers if b is not None)
        finally:
            state.serving.stop()

    responses, batched = asyncio.run(run())
    manifest = PlanManifest.from_json(plan_files.manifest)
    reference = PlanRuntime.from_bytes(plan_files.plan, manifest,
                                       weights_from_bytes(plan_files.weights, manifest=manifest))
    assert batched >= 1  # valid requests did share calls while the invalid ones were in flight
    answers = iter(xs)
    for (request_id, _, _), r in zip(calls, responses, strict=True):
        if request_id is None:
            assert r.status_code == 400, r.text
            assert set(r.json()) == {"error"} and r.json()["error"]
            continue
        x = next(answers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == request_id
        probs = next(o for o in body["outputs"] if o["datatype"] == "FP32")
        assert probs["shape"] == [len(x), 10]
        np.testing.assert_allclose(np.asarray(probs["data"]).reshape(len(x), -1),
                                   reference.predict(x), rtol=1e-5, atol=1e-6)
    assert sum(r.status_code == 400 for r in responses) == 2 * len(_invalid_bodies())
