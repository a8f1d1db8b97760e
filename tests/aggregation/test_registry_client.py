"""The registry client and the publisher against a real server (uvicorn, SQLite, loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregation.errors import (
    RegistryClientError,
    RegistryNotFound,
    RegistryRejected,
    RegistryUnavailable,
)
from aggregation.publishing import GateSettings, Publisher
from aggregation.registry_client import RegistryClient
from aggregation.report import RoundReport
from aggregation.rounds import RoundOutcome
from edgefleet.plan import PlanManifest, load_weights
from edgefleet.wire import VersionLineage, VersionPublish
from tests.aggregation.conftest import Server, free_port, register_plan

MODEL = "digits-rc"


@pytest.fixture(scope="module")
def registered(registry_server: Server, digits_plan_dir: Path) -> int:
    return register_plan(registry_server, MODEL, digits_plan_dir)


@pytest.fixture
def client(registry_server: Server, registered: int) -> Iterator[RegistryClient]:
    with RegistryClient(registry_server.url, registry_server.admin_key, retries=0) as c:
        yield c


def test_reads_the_production_version_and_its_artifacts(client: RegistryClient,
                                                        digits_plan_dir: Path) -> None:
    version = client.production_version(MODEL)
    assert version == 1
    manifest = client.manifest(MODEL, version)
    assert manifest == PlanManifest.load(digits_plan_dir / "manifest.json")
    assert client.plan(MODEL, version, manifest) == (digits_plan_dir / "plan.tflite").read_bytes()
    expected = load_weights(digits_plan_dir / "weights.safetensors")
    got = client.weights(MODEL, version, manifest)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert client.alias(MODEL, "no-such-alias") is None
    assert client.latest_run_version(MODEL, "never-ran") is None


def test_publishes_weights_only_versions_with_lineage(client: RegistryClient) -> None:
    manifest = client.manifest(MODEL, 1)
    weights = client.weights(MODEL, 1, manifest)
    for rnd, parent in ((1, 1), (2, None)):
        parent = parent or client.latest_run_version(MODEL, "run-a").version  # type: ignore[union-attr]
        meta = VersionPublish(
            metrics={"holdout.accuracy": 0.9}, plan_from_version=parent,
            lineage=VersionLineage(parent_version=parent, federated_run="run-a",
                                   federated_round=rnd, num_clients=3, strategy="fedavg"),
        )
        info = client.publish_weights(MODEL, {k: v * 0.5 for k, v in weights.items()}, meta,
                                      plan_sha256=manifest.plan_sha256)
        assert info.status == "READY" and info.lineage.federated_round == rnd
        assert info.plan.sha256 == manifest.plan_sha256
    latest = client.latest_run_version(MODEL, "run-a")
    assert latest is not None and latest.lineage.federated_round == 2
    assert latest.lineage.parent_version == latest.version - 1
    moved = client.move_alias(MODEL, "canary", latest.version, reason="test")
    assert moved.version == latest.version
    assert client.alias(MODEL, "canary").version == latest.version  # type: ignore[union-attr]


def test_refusals_and_outages_are_typed_errors(registry_server: Server, registered: int,
                                               client: RegistryClient) -> None:
    manifest = client.manifest(MODEL, 1)
    weights = client.weights(MODEL, 1, manifest)
    meta = VersionPublish(plan_from_version=1, lineage=VersionLineage(parent_version=1))
    with RegistryClient(registry_server.url, "wrong-key", retries=0) as bad:
        with pytest.raises(RegistryRejected) as err:
            bad.publish_weights(MODEL, weights, meta)
        assert err.value.status_code in (401, 403)
    with pytest.raises(RegistryNotFound):
        client.manifest("no-such-model", 1)
    wrong = dict(weights)
    first = next(iter(wrong))
    wrong[first] = np.zeros((2, 2), np.float32)
    with pytest.raises(RegistryRejected) as err:
        client.publish_weights(MODEL, wrong, meta)
    assert err.value.status_code == 422
    with pytest.raises(RegistryClientError):
        client.publish_weights(MODEL, weights, VersionPublish())  # no parent: refused locally
    with RegistryClient(f"http://127.0.0.1:{free_port()}", retries=1, timeout=2) as down, \
            pytest.raises(RegistryUnavailable):
        down.production_version(MODEL)


def test_publisher_records_lineage_and_gates_the_canary(client: RegistryClient) -> None:
    manifest = client.manifest(MODEL, 1)
    weights = client.weights(MODEL, 1, manifest)
    publisher = Publisher(client, MODEL, manifest, "run-gate", parent_version=1, strategy="fedavg",
                          production_metrics={"accuracy": 0.90},
                          gate=GateSettings(max_drop=0.02, rollout_percent=25.0),
                          hyperparameters={"selection": "uniform"})

    def outcome(rnd: int, accuracy: float) -> RoundOutcome:
        report = RoundReport(rnd, status="ok", selected=[1, 2, 3], accepted=[1, 2],
                             refused={3: ["not-finite: x"]},
                             metrics={"holdout.accuracy": accuracy, "train.loss": float("nan")})
        return RoundOutcome(report, weights, drift_scores={1: 0.5, 2: None})

    good = publisher(outcome(1, 0.89))
    info = client.version(MODEL, good)
    assert info.lineage.parent_version == 1 and info.lineage.federated_run == "run-gate"
    assert info.lineage.num_clients == 2 and info.lineage.strategy == "fedavg"
    assert info.metrics["holdout.accuracy"] == 0.89 and "train.loss" not in info.metrics
    assert info.metrics["round.refused"] == 1.0
    assert info.hyperparameters["round"]["refused"] == {"3": ["not-finite: x"]}
    canary = client.alias(MODEL, "canary")
    assert canary is not None and canary.version == good and canary.rollout_percent == 25.0
    assert publisher.decisions[good].promote

    worse = publisher(outcome(2, 0.80))
    assert client.version(MODEL, worse).lineage.parent_version == good
    assert client.alias(MODEL, "canary").version == good  # type: ignore[union-attr]
    assert not publisher.decisions[worse].promote
