"""The local V2 endpoint speaks like the server: request limits (413/400), 404 for unknown models
and versions, server and readiness metadata, the ``outputs`` filter, and telemetry only for what
this device's own model served."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.errors import UnknownModelError
from edge_client.http_api import LocalServer
from edgefleet.datasets import Dataset
from edgefleet_cli.main import app
from tests.edge_client.conftest import MODEL, fast_settings
from tests.edge_client.stub_server import StubServer

LIMIT = 8192  # max_request_bytes of these tests' agent
BATCH = 8  # max_batch


def _body(rows: int, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [rows, 64], "datatype": "FP32",
                        "data": [0.0] * (rows * 64)}], **extra}


@pytest.fixture
def agent(tmp_path: Path, published: StubServer, stub_credentials: Credentials
          ) -> Iterator[Agent]:
    settings = fast_settings(tmp_path / "agent", max_request_bytes=LIMIT, max_batch=BATCH)
    with Agent(settings, credentials=stub_credentials) as a:
        assert a.poll() == "installed"
        yield a


def _raw_post(port: int, head: dict[str, str], payload: bytes) -> tuple[int, dict[str, Any]]:
    """One request written in a single ``sendall`` (the server may answer and close before
    reading all of it), then its response."""
    lines = [f"POST /v2/models/{MODEL}/infer HTTP/1.1", "Host: 127.0.0.1",
             *(f"{k}: {v}" for k, v in head.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


# --- limits -------------------------------------------------------------------------------------
def test_settings_default_to_the_servers_limits(tmp_path: Path) -> None:
    s = fast_settings(tmp_path)
    assert s.max_request_bytes == 4 * 1024 * 1024 and s.max_batch == 1024


def test_oversized_bodies_are_413_announced_or_chunked(local: httpx.Client) -> None:
    port = local.base_url.port
    assert port is not None
    status, body = _raw_post(port, {"Content-Length": str(LIMIT + 1)}, b"{}")
    assert status == 413 and f"limit of {LIMIT} bytes" in body["error"]
    chunked = {"Transfer-Encoding": "chunked"}
    status, body = _raw_post(port, chunked, _chunked(*[b"[" + b"0," * 600] * 8))  # ~9.6 kB
    assert status == 413 and "chunked body" in body["error"]
    small = json.dumps(_body(1)).encode()
    status, body = _raw_post(port, chunked, _chunked(small[:100], small[100:]))
    assert status == 200 and body["parameters"]["path"] == "local"
    status, body = _raw_post(port, chunked, b"zz\r\n")
    assert status == 400 and "malformed chunked body" in body["error"]
    assert local.get("/v2/health/live").status_code == 200  # the endpoint carries on


def test_batch_over_the_limit_is_400_and_not_counted(local: httpx.Client, agent: Agent) -> None:
    r = local.post(f"/v2/models/{MODEL}/infer", json=_body(BATCH + 1))
    assert r.status_code == 400 and r.json()["error"] == f"batch size {BATCH + 1} is outside 1..8"
    assert local.post(f"/v2/models/{MODEL}/infer", json=_body(BATCH)).status_code == 200
    reports = agent.flush_telemetry()
    assert [(r.version, r.inference.local) for r in reports] == [(1, BATCH)]


# --- names and codes ----------------------------------------------------------------------------
def test_unknown_model_and_version_are_404(local: httpx.Client, published: StubServer) -> None:
    r = local.post("/v2/models/nope/infer", json=_body(1))
    assert r.status_code == 404 and "vNone" not in r.json()["error"]
    assert "model 'nope'" in r.json()["error"]
    r = local.post(f"/v2/models/{MODEL}/versions/9/infer", json=_body(1))
    assert r.status_code == 404 and "version 9 of 'digits-mlp'" in r.json()["error"]
    assert local.post(f"/v2/models/{MODEL}/versions/x/infer", json=_body(1)).status_code == 404
    r = local.post(f"/v2/models/{MODEL}/versions/2/infer", json=_body(1))  # the server has it
    assert r.status_code == 200 and r.json()["parameters"]["path"] == "fallback"


def test_server_and_model_metadata_and_readiness(local: httpx.Client) -> None:
    meta = local.get("/v2").json()
    assert meta["name"] == "edgefleet" and meta["version"]
    assert meta["extensions"] == ["binary_tensor_data"]
    model = local.get(f"/v2/models/{MODEL}").json()
    assert model["name"] == MODEL and model["versions"] == ["1"]
    assert model["parameters"]["class_labels"] == [str(i) for i in range(10)]
    assert local.get(f"/v2/models/{MODEL}/versions/1").status_code == 200
    assert local.get(f"/v2/models/{MODEL}/versions/2").status_code == 404
    assert local.get(f"/v2/models/{MODEL}/ready").json() == {
        "name": MODEL, "version": "1", "ready": True}
    assert local.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
    assert local.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 404
    assert local.get("/v2/models/other/ready").status_code == 404


def test_ready_is_503_while_the_assignment_is_not_installed(
        tmp_path: Path, published: StubServer, stub_credentials: Credentials) -> None:
    with Agent(fast_settings(tmp_path / "a"), credentials=stub_credentials) as agent:
        agent.assignment = published.assignment()
        server = LocalServer(agent).start()
        try:
            r = httpx.get(f"{server.url}/v2/models/{MODEL}/ready")
            assert r.status_code == 503 and "not installed yet" in r.json()["error"]
            assert httpx.get(f"{server.url}/v2/models/other/ready").status_code == 404
        finally:
            server.stop()


def test_outputs_filter_like_the_server(local: httpx.Client, agent: Agent) -> None:
    r = local.post(f"/v2/models/{MODEL}/infer", json=_body(2, outputs=[{"name": "label"}]))
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    both = [{"name": "label"}, {"name": "probabilities"}]
    r = local.post(f"/v2/models/{MODEL}/infer", json=_body(1, outputs=both))
    assert [o["name"] for o in r.json()["outputs"]] == ["label", "probabilities"]
    r = local.post(f"/v2/models/{MODEL}/infer", json=_body(1, outputs=[{"name": "logits"}]))
    assert r.status_code == 400 and "unknown output(s) ['logits']" in r.json()["error"]
    assert agent.flush_telemetry()[0].inference.local == 3  # the refused one never ran


# --- telemetry of what was served ---------------------------------------------------------------
def test_unknown_version_queues_no_telemetry(agent: Agent, published: StubServer) -> None:
    with pytest.raises(UnknownModelError, match="version 9"):
        agent.predict(np.zeros(64), version=9)
    assert agent.predict(np.zeros(64), version=2).path == "fallback"
    assert agent.predict(np.zeros((2, 64))).path == "local"
    reports = agent.flush_telemetry()
    assert [(r.model, r.version) for r in reports] == [(MODEL, 1)]  # nothing about v2 or v9
    stats = reports[0].inference
    assert (stats.local, stats.fallback, stats.errors) == (2, 1, 0)
    assert agent.drain_outbox().discarded == 0


# --- offline, under the registry name -----------------------------------------------------------
def test_offline_install_under_the_registry_name(tmp_path: Path, digits_plan_dir: Path,
                                                 digits_data: Dataset) -> None:
    data = tmp_path / "agent"
    result = CliRunner().invoke(app, ["agent", "install", str(digits_plan_dir), "--version", "3",
                                      "--model", "fleet-digits", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    with Agent(fast_settings(data)) as agent:
        server = LocalServer(agent).start()
        try:
            meta = httpx.get(f"{server.url}/v2/models/fleet-digits").json()
            assert meta["name"] == "fleet-digits" and meta["versions"] == ["3"]
            plan_name = meta["parameters"]["plan_name"]
            assert httpx.get(f"{server.url}/v2/models/{plan_name}").status_code == 404
            x = digits_data.x_test[:1]
            body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                "data": x.reshape(-1).tolist()}]}
            r = httpx.post(f"{server.url}/v2/models/fleet-digits/infer", json=body)
            assert r.status_code == 200 and r.json()["model_name"] == "fleet-digits"
            r = httpx.post(f"{server.url}/v2/models/other/infer", json=body)
            assert r.status_code == 404 and "no server to ask" in r.json()["error"]
        finally:
            server.stop()
