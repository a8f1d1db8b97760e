"""The Flower ClientApp, called with real flwr Messages and Contexts (no SuperLink): it reads the
plan and labels the agent wrote into the shared data directory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from edge_client.agent import Agent
from edge_client.credentials import Credentials
from edge_client.eligibility import DeviceConditions, SimulatedEligibility
from edge_client.flower_client import app, make_client_app
from edge_client.settings import AgentSettings
from edgefleet.datasets import Dataset
from edgefleet.drift import DriftSummary
from edgefleet.drift.packed import unpack
from tests.edge_client.conftest import MODEL, active
from tests.edge_client.stub_server import StubServer


def _message(kind: str, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id=f"m-{kind}", src_node_id=0, dst_node_id=7,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=kind)
    return Message(content=content, metadata=meta)  # type: ignore[call-overload]


def _context(data_dir: Path, eligibility: str = "always") -> Context:
    return Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                   node_config={"data-dir": str(data_dir), "eligibility": eligibility})


@pytest.fixture
def device(settings: AgentSettings, published: StubServer, stub_credentials: Credentials,
           digits_data: Dataset) -> Iterator[Agent]:
    """An agent that installed v1, answered some traffic and stored 200 labelled examples."""
    with Agent(settings, credentials=stub_credentials) as agent:
        agent.poll()
        agent.predict(digits_data.x_test[:40])
        agent.flush_telemetry()
        agent.record_label(digits_data.x_train[:200], digits_data.y_train[:200])
        yield agent


def _global_weights(agent: Agent, scale: float = 1.0) -> ArrayRecord:
    weights = active(agent).runtime.get_weights()
    return ArrayRecord({k: Array(v * np.float32(scale)) for k, v in weights.items()})


def _drift(agent: Agent, config: ConfigRecord) -> DriftSummary:
    """The reply's packed drift summary (``drift-packed``, :mod:`edgefleet.drift.packed`)."""
    reference = active(agent).runtime.manifest.reference
    assert reference is not None
    return unpack(config["drift-packed"], reference).to_summary()


def test_query_reports_eligibility_drift_and_examples(device: Agent) -> None:
    reply = app(_message("query", RecordDict()), _context(device.settings.data_dir))
    config = reply.content["config"]
    assert config["eligible"] is True and json.loads(str(config["reasons"])) == []
    assert config["model"] == MODEL and config["version"] == 1
    drift = _drift(device, config)
    assert drift.n == 40 and drift.version == 1
    assert reply.content["metrics"]["num-examples"] == 200
    assert reply.metadata.reply_to_message_id == "m-query"


def test_train_returns_new_weights_and_metrics(device: Agent) -> None:
    content = RecordDict({"arrays": _global_weights(device),
                          "config": ConfigRecord({"epochs": 2, "lr": 0.05, "seed": 1})})
    reply = app(_message("train", content), _context(device.settings.data_dir))
    metrics, config = reply.content["metrics"], reply.content["config"]
    assert metrics["num-examples"] == 200 and metrics["steps"] == 2 * 7
    assert np.isfinite(float(metrics["train-loss"]))  # type: ignore[arg-type]
    # the first pass starts from the received weights: its loss is above the last epoch's
    first = float(metrics["first-epoch-loss"])  # type: ignore[arg-type]
    assert np.isfinite(first) and first > float(metrics["train-loss"])  # type: ignore[arg-type]
    assert config["status"] == "ok" and _drift(device, config).n == 40
    new = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    old = active(device).runtime.get_weights()
    assert set(new) == set(old)
    assert any(not np.allclose(new[k], old[k]) for k in new)  # it trained
    # the agent's active model is untouched: the ClientApp trains its own copy
    np.testing.assert_array_equal(active(device).runtime.get_weights()["dense_0_bias"],
                                  old["dense_0_bias"])


def test_train_declines_when_not_eligible(device: Agent) -> None:
    content = RecordDict({"arrays": _global_weights(device), "config": ConfigRecord({})})
    reply = app(_message("train", content), _context(device.settings.data_dir, "never"))
    assert reply.content["metrics"]["num-examples"] == 0
    assert reply.content["config"]["status"] == "declined"
    assert "not eligible" in str(reply.content["config"]["reason"])
    assert "arrays" not in reply.content.array_records


def test_train_stops_between_steps_when_unplugged(device: Agent) -> None:
    ok, unplugged = DeviceConditions(), DeviceConditions(external_power=False)
    # one check before training, then one before every step: three steps, then unplugged
    sim = SimulatedEligibility(trace=[ok, ok, ok, ok, unplugged])
    client_app = make_client_app(lambda context, settings: sim)
    content = RecordDict({"arrays": _global_weights(device),
                          "config": ConfigRecord({"epochs": 5})})
    reply = client_app(_message("train", content), _context(device.settings.data_dir))
    assert reply.content["config"]["status"] == "stopped"
    assert reply.content["metrics"]["steps"] == 3
    assert reply.content["metrics"]["num-examples"] == 3 * 32


def test_train_declines_weights_of_another_plan(device: Agent) -> None:
    bad = ArrayRecord({"dense_0_kernel": Array(np.zeros((3, 3), dtype=np.float32))})
    reply = app(_message("train", RecordDict({"arrays": bad})),
                _context(device.settings.data_dir))
    assert reply.content["config"]["status"] == "declined"
    assert "weights" in str(reply.content["config"]["reason"])
    other_plan = ConfigRecord({"plan-sha256": "0" * 64})
    reply = app(_message("train", RecordDict({"arrays": _global_weights(device),
                                              "config": other_plan})),
                _context(device.settings.data_dir))
    assert "not this device's plan" in str(reply.content["config"]["reason"])


def test_train_declines_without_model_or_labels(tmp_path: Path) -> None:
    reply = app(_message("train", RecordDict()), _context(tmp_path / "empty"))
    assert reply.content["config"]["reason"] == "no active model on this device"


def test_evaluate_on_the_local_store(device: Agent, digits_data: Dataset) -> None:
    reply = app(_message("evaluate", RecordDict({"arrays": _global_weights(device)})),
                _context(device.settings.data_dir))
    m = reply.content["metrics"]
    assert m["num-examples"] == 200 and float(m["eval-acc"]) > 0.7  # type: ignore[arg-type]
    worse = app(_message("evaluate", RecordDict({"arrays": _global_weights(device, 0.0)})),
                _context(device.settings.data_dir))
    assert float(worse.content["metrics"]["eval-acc"]) < 0.5  # type: ignore[arg-type]
