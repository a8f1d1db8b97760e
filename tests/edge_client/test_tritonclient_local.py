"""The standard V2 client (``tritonclient[http]``, its defaults) against the agent's local
endpoint over real HTTP: health, metadata, binary and JSON inference, request ids, refusals, and
a JSON body with no ``Content-Type`` at all (the server runs the same checks:
``tests/server/test_tritonclient.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.http_api import LocalServer
from edge_client.models import ModelManager
from edgefleet.datasets import Dataset
from tests.edge_client import triton_checks as checks
from tests.edge_client.conftest import MODEL, fast_settings

VERSION = 3


@pytest.fixture
def served(tmp_path: Path, digits_plan_dir: Path) -> Iterator[tuple[Agent, LocalServer]]:
    """An offline agent running the digits plan as ``MODEL`` version 3, and its endpoint."""
    settings = fast_settings(tmp_path / "agent")
    ModelManager(settings.models_dir).install_dir(digits_plan_dir, MODEL, VERSION)
    with Agent(settings) as agent:
        server = LocalServer(agent).start()
        try:
            yield agent, server
        finally:
            server.stop()


def test_tritonclient_with_its_defaults(served: tuple[Agent, LocalServer],
                                        digits_data: Dataset) -> None:
    agent, server = served
    client = checks.connect(server.url)
    try:
        checks.check_health_and_metadata(client, MODEL, VERSION, {})
        x = digits_data.x_test[:3].astype(np.float32)
        response = checks.check_infer(client, MODEL, VERSION, {}, x,
                                      lambda rows: agent.predict(rows).probs)
        assert response["parameters"]["path"] == "local"
        checks.check_refusals(client, MODEL, {})
    finally:
        client.close()


def test_json_without_content_type_is_accepted(served: tuple[Agent, LocalServer],
                                               digits_data: Dataset) -> None:
    agent, server = served
    x = digits_data.x_test[:2].astype(np.float32)
    body = json.dumps({"id": "no-ct", "inputs": [
        {"name": "x", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    status, answer = checks.post_without_content_type(
        "127.0.0.1", server.port, f"/v2/models/{MODEL}/infer", body, {})
    assert status == 200 and answer["id"] == "no-ct"
    probs = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(probs, agent.predict(x).probs, rtol=1e-5, atol=1e-6)
    status, answer = checks.post_without_content_type(
        "127.0.0.1", server.port, f"/v2/models/{MODEL}/infer", b'{"inputs": [', {})
    assert status == 400 and answer["error"].startswith("invalid request: ")
