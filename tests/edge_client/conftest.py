"""Fixtures of the edge agent's tests: fast agent settings, a stub server, weight variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.http_api import LocalServer
from edge_client.models import ActiveModel
from edge_client.settings import AgentSettings
from edgefleet.plan import PlanManifest, load_weights, weights_to_bytes
from tests.edge_client.stub_server import StubServer

MODEL = "digits-mlp"


def active(agent: Agent) -> ActiveModel:
    """The agent's active model (failing the test when there is none)."""
    assert agent.models.active is not None, "no active model"
    return agent.models.active


def fast_settings(data_dir: Path, **overrides: object) -> AgentSettings:
    """Settings that never make a test wait: no backoff, short timeouts, free-space check off."""
    values: dict[str, object] = {
        "data_dir": data_dir, "retries": 1, "retry_backoff_s": 0.0, "connect_timeout_s": 2.0,
        "read_timeout_s": 5.0, "inference_timeout_s": 5.0, "fallback_cooldown_s": 0.0,
        "outbox_backoff_base_s": 0.0, "outbox_backoff_max_s": 0.0, "min_free_bytes": 0,
        "http_port": -1, "poll_jitter": 0.0, "install_backoff_base_s": 0.0,
    }
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return fast_settings(tmp_path / "agent")


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def stub_credentials(stub: StubServer) -> Credentials:
    return Credentials(server_url=stub.url, device_id="dev-1", device_token=stub.state.token,
                       signing_key=stub.signing_key)


def scaled_weights(plan_dir: Path, factor: float) -> bytes:
    """The plan's weights times ``factor`` (another "version"; huge factors overflow to NaN)."""
    manifest = PlanManifest.load(plan_dir / "manifest.json")
    weights = load_weights(plan_dir / "weights.safetensors", manifest=manifest)
    scaled = {k: (v * np.float32(factor)).astype(v.dtype) for k, v in weights.items()}
    return weights_to_bytes(scaled, plan_sha256=manifest.plan_sha256)


def poisoned_weights(plan_dir: Path) -> bytes:
    """Finite weights whose first kernel is float32's largest value: an all-zeros input still
    gets finite probabilities (only the biases act), every real input overflows to NaN — a model
    that passes a zeros-only smoke test and fails the agent's (which also probes the means)."""
    manifest = PlanManifest.load(plan_dir / "manifest.json")
    weights = load_weights(plan_dir / "weights.safetensors", manifest=manifest)
    scaled = dict(weights)
    first = manifest.weights[0].name
    scaled[first] = np.full_like(weights[first], np.finfo(np.float32).max)
    return weights_to_bytes(scaled, plan_sha256=manifest.plan_sha256)


@pytest.fixture
def published(stub: StubServer, digits_plan_dir: Path) -> StubServer:
    """Version 1 = the trained digits plan; version 2 = the same plan with other weights."""
    stub.publish(MODEL, 1, digits_plan_dir)
    stub.publish(MODEL, 2, digits_plan_dir, weights=scaled_weights(digits_plan_dir, 0.9))
    stub.assign(MODEL, 1)
    return stub


@pytest.fixture
def local(agent: Agent) -> Iterator[httpx.Client]:
    """A client of the agent's local V2 endpoint (the test module provides ``agent``)."""
    server = LocalServer(agent, port=0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.stop()
