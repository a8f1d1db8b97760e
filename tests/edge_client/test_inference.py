"""On-device inference: the Python API and the local HTTP endpoint, local vs fallback paths,
clear refusals for wrong input, labels into the local store."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.errors import InvalidInputError, ModelUnavailableError
from edge_client.http_api import LocalServer
from edge_client.settings import AgentSettings
from edgefleet.datasets import Dataset
from tests.edge_client.conftest import MODEL, active
from tests.edge_client.stub_server import StubServer


@pytest.fixture
def agent(settings: AgentSettings, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    with Agent(settings, credentials=stub_credentials) as a:
        assert a.poll() == "installed"
        yield a


def test_local_prediction_matches_the_runtime(agent: Agent, digits_data: Dataset) -> None:
    x = digits_data.x_test[:20]
    pred = agent.predict(x)
    assert pred.path == "local" and pred.model == MODEL and pred.version == 1
    np.testing.assert_allclose(pred.probs, active(agent).runtime.predict(x), rtol=1e-6)
    assert pred.classes == [str(int(i)) for i in np.argmax(pred.probs, axis=1)]
    accuracy = np.mean(np.argmax(pred.probs, axis=1) == digits_data.y_test[:20])
    assert accuracy > 0.7
    single = agent.predict(x[0].tolist())  # one example without a batch axis
    assert single.probs.shape == (1, 10)


def test_wrong_shape_is_a_clear_error_without_fallback(agent: Agent,
                                                       published: StubServer) -> None:
    with pytest.raises(InvalidInputError, match=r"expected \[n, 64\]"):
        agent.predict(np.zeros((2, 10)))
    with pytest.raises(InvalidInputError, match="NaN"):
        agent.predict(np.full((1, 64), np.nan))
    with pytest.raises(InvalidInputError, match="real numbers"):
        agent.predict([["a"] * 64])
    with pytest.raises(InvalidInputError, match="rectangular"):
        agent.predict([[1.0, 2.0], [3.0]])
    assert published.state.infer_calls == 0  # no fallback storm


def test_drift_and_counts_are_recorded_per_version(agent: Agent, digits_data: Dataset) -> None:
    agent.predict(digits_data.x_test[:30])
    agent.predict(digits_data.x_test[30:35])
    reports = agent.flush_telemetry()
    assert len(reports) == 1
    r = reports[0]
    assert (r.model, r.version) == (MODEL, 1)
    assert r.inference.local == 35 and r.inference.fallback == 0
    assert r.inference.latency_ms_p50 is not None and r.inference.latency_ms_p99 is not None
    assert r.drift is not None and r.drift.n == 35 and sum(r.drift.class_counts) == 35
    assert agent.state.load_drift(MODEL, 1) is not None  # the ClientApp's copy


def test_fallback_when_no_local_model(settings: AgentSettings, published: StubServer,
                                      stub_credentials: Credentials,
                                      digits_data: Dataset) -> None:
    with Agent(settings, credentials=stub_credentials) as agent:
        with pytest.raises(ModelUnavailableError, match="no model is assigned"):
            agent.predict(digits_data.x_test[:2])  # nothing known yet: nobody can answer
        agent.assignment = published.assignment()  # assigned, not yet installed
        pred = agent.predict(digits_data.x_test[:3])
        assert pred.path == "fallback" and pred.version == 1 and pred.probs.shape == (3, 10)
        with pytest.raises(InvalidInputError, match="refused the input too"):
            agent.predict(np.zeros((1, 7)))  # the server refuses: no retry storm either
        reports = agent.flush_telemetry()
        assert reports[0].inference.fallback == 3 and reports[0].drift is None


def test_request_for_another_version_goes_to_the_server(agent: Agent,
                                                        published: StubServer) -> None:
    pred = agent.predict(np.zeros(64), version=2)
    assert pred.path == "fallback" and pred.version == 2
    assert agent.predict(np.zeros(64), version=1).path == "local"


def test_not_enrolled_and_no_model(tmp_path: Path) -> None:
    from tests.edge_client.conftest import fast_settings

    with Agent(fast_settings(tmp_path / "a")) as agent:
        assert agent.client is None
        with pytest.raises(ModelUnavailableError, match="without enrolment"):
            agent.predict(np.zeros(64))


def test_record_label_maps_class_names_and_checks_shape(agent: Agent) -> None:
    assert agent.record_label(np.ones(64), "7") == 1
    assert agent.record_label(np.zeros((2, 64)), [3, "4"]) == 2
    with pytest.raises(InvalidInputError, match="expected"):
        agent.record_label(np.zeros((1, 63)), [1])
    with pytest.raises(InvalidInputError, match="out of range"):
        agent.record_label(np.zeros(64), 10)
    with pytest.raises(InvalidInputError, match="2 examples but 1 labels"):
        agent.record_label(np.zeros((2, 64)), [1])
    _, y = agent.labels.load(MODEL, (64,))
    assert y.tolist() == [7, 3, 4]


def test_local_evaluation_uses_the_label_store(agent: Agent, digits_data: Dataset) -> None:
    first = agent.local_evaluation()
    assert first is not None and first.n_examples == 0
    agent.record_label(digits_data.x_test[:100], digits_data.y_test[:100])
    ev = agent.local_evaluation()
    assert ev is not None and ev.n_examples == 100 and (ev.accuracy or 0) > 0.7


# --- the local HTTP endpoint ------------------------------------------------------------------
def test_http_infer_speaks_v2(local: httpx.Client, agent: Agent, digits_data: Dataset) -> None:
    x = digits_data.x_test[:4]
    body = {"id": "r1", "inputs": [{"name": "x", "shape": [4, 64], "datatype": "FP32",
                                    "data": x.reshape(-1).tolist()}]}
    r = local.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["model_version"] == "1" and out["id"] == "r1"
    assert out["parameters"] == {"path": "local"}
    probs = {o["name"]: o for o in out["outputs"]}["probabilities"]
    assert probs["shape"] == [4, 10]
    np.testing.assert_allclose(np.reshape(probs["data"], (4, 10)), agent.predict(x).probs,
                               rtol=1e-6)
    r = local.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert r.status_code == 200


def test_http_errors_are_v2_error_bodies(local: httpx.Client) -> None:
    bad_shape = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                             "data": [1, 2, 3]}]}
    r = local.post(f"/v2/models/{MODEL}/infer", json=bad_shape)
    assert r.status_code == 400 and "expected [n, 64]" in r.json()["error"]
    mismatch = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1]}]}
    assert "shape [1, 64] needs 64" in local.post(f"/v2/models/{MODEL}/infer",
                                                 json=mismatch).json()["error"]
    assert local.post(f"/v2/models/{MODEL}/infer", content=b"{oops").status_code == 400
    assert local.post(f"/v2/models/{MODEL}/infer", json={"inputs": "no"}).status_code == 400
    assert local.get("/nope").status_code == 404
    assert local.get("/v2/models/other").status_code == 404
    # announce a body over the limit: refused before a byte of it is read
    conn = http.client.HTTPConnection("127.0.0.1", local.base_url.port, timeout=10)
    conn.request("POST", f"/v2/models/{MODEL}/infer", body=b"x",
                 headers={"Content-Length": str(4 * 1024 * 1024 + 1)})
    too_big = conn.getresponse()
    assert too_big.status == 413 and "exceeds" in json.loads(too_big.read())["error"]
    conn.close()


def test_http_health_labels_status(local: httpx.Client, agent: Agent) -> None:
    assert local.get("/v2/health/live").json() == {"live": True}
    assert local.get("/v2/health/ready").status_code == 200
    meta = local.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"][0]["shape"] == [-1, 64]
    r = local.post("/v1/labels", json={"inputs": [[0.0] * 64, [1.0] * 64], "labels": ["1", 2]})
    assert r.status_code == 201 and r.json() == {"stored": 2}
    assert local.post("/v1/labels", json={"inputs": [[0.0] * 64]}).status_code == 400
    status = local.get("/v1/status").json()
    assert status["active"]["version"] == 1 and status["labelled_examples"] == 2
    json.dumps(status)


def test_http_not_ready_without_model(tmp_path: Path) -> None:
    from tests.edge_client.conftest import fast_settings

    with Agent(fast_settings(tmp_path / "a")) as agent:
        server = LocalServer(agent).start()
        try:
            r = httpx.get(f"{server.url}/v2/health/ready")
            assert r.status_code == 503 and r.json() == {"ready": False}
            body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.0] * 64}]}
            r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
            assert r.status_code == 503 and "error" in r.json()
        finally:
            server.stop()
