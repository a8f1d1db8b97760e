"""The standard V2 client (``tritonclient[http]``, its defaults) against a real
``edgefleet server run`` process and a real enrolled agent process: health, metadata, binary and
JSON inference, request ids and refusals work on both, and both refuse malformed requests with
the same messages (one codec, :mod:`edgefleet.v2`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.runtime import PlanRuntime
from tests.edge_client import triton_checks as checks
from tests.server.processes import (
    ADMIN,
    Proc,
    enroll,
    publish,
    set_alias,
    start_agent,
    start_server,
    wait_http,
)

MODEL = "digits"
SECRET = "triton-secret-19"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@dataclass
class Endpoints:
    server: Proc
    agent: Proc
    runtime: PlanRuntime


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory, digits_plan_dir: Path
              ) -> Iterator[Endpoints]:
    root = tmp_path_factory.mktemp("tritonclient")
    server = start_server(root, f"sqlite:///{root / 'edgefleet.db'}",
                          env={"EDGEFLEET_SERVER_INFERENCE_KEYS": f"shop:{SECRET}"})
    agent: Proc | None = None
    try:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            assert publish(admin, MODEL, digits_plan_dir) == 1
            set_alias(admin, MODEL, "production", 1)
        data_dir = root / "agent"
        enroll(server.url, data_dir, "triton-device", model=MODEL)
        agent = start_agent(root, data_dir)
        wait_http(agent, f"{agent.url}/v2/health/ready", timeout=60)
        yield Endpoints(server, agent, PlanRuntime.from_dir(digits_plan_dir))
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def test_server_answers_tritonclient_with_its_defaults(endpoints: Endpoints,
                                                       digits_data: Dataset) -> None:
    client = checks.connect(endpoints.server.url)
    try:
        checks.check_health_and_metadata(client, MODEL, 1, AUTH)
        response = checks.check_infer(client, MODEL, 1, AUTH, digits_data.x_test[:4],
                                      endpoints.runtime.predict)
        assert response["model_name"] == MODEL
        checks.check_refusals(client, MODEL, AUTH)
    finally:
        client.close()


def test_agent_accepts_and_refuses_what_the_server_does(endpoints: Endpoints,
                                                        digits_data: Dataset) -> None:
    server, device = (checks.connect(p.url) for p in (endpoints.server, endpoints.agent))
    try:
        checks.check_health_and_metadata(device, MODEL, 1, {})
        response = checks.check_infer(device, MODEL, 1, {}, digits_data.x_test[:4],
                                      endpoints.runtime.predict)
        assert response["parameters"]["path"] == "local"
        assert checks.check_refusals(device, MODEL, {}) == checks.check_refusals(
            server, MODEL, AUTH)
    finally:
        server.close()
        device.close()


def test_server_takes_json_without_content_type(endpoints: Endpoints,
                                                digits_data: Dataset) -> None:
    x = digits_data.x_test[:2].astype(np.float32)
    body = json.dumps({"id": "no-ct", "inputs": [
        {"name": "x", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    url = urlsplit(endpoints.server.url)
    path = f"/v2/models/{MODEL}/infer"
    status, answer = checks.post_without_content_type(url.hostname or "", url.port or 80, path,
                                                      body, AUTH)
    assert status == 200 and answer["id"] == "no-ct", answer
    probs = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(probs, endpoints.runtime.predict(x), rtol=1e-5, atol=1e-6)
    status, answer = checks.post_without_content_type(url.hostname or "", url.port or 80, path,
                                                      body[:-3], AUTH)
    assert status == 400 and set(answer) == {"error"}
    status, answer = checks.post_without_content_type(url.hostname or "", url.port or 80, path,
                                                      body, {})
    assert status == 401 and set(answer) == {"error"}
