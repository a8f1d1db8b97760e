"""Whole runs in process: Flower's in-memory grid and runtime, the real server, the real plan.

What is left for the end-to-end test with SuperLink/SuperNode processes and edge agents is in
the aggregation report (see ``aggregation/server_app.py``'s module notes for the run itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aggregation.evaluation import Holdout
from aggregation.registry_client import RegistryClient
from aggregation.server_app import run_federation
from aggregation.settings import RunSettings
from edgefleet.plan import PlanManifest, save_weights
from edgefleet.runtime import PlanRuntime
from tests.aggregation.conftest import Server, register_plan
from tests.aggregation.digits_app import digits_client_app
from tests.aggregation.harness import federation

MODEL = "digits-fl"


@pytest.fixture(scope="module")
def untrained(digits_plan_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits plan with its untrained (authoring-time) weights."""
    out = tmp_path_factory.mktemp("untrained")
    for name in ("plan.tflite", "manifest.json"):
        shutil.copy(digits_plan_dir / name, out / name)
    manifest = PlanManifest.load(out / "manifest.json")
    runtime = PlanRuntime.from_bytes((out / "plan.tflite").read_bytes(), manifest)
    save_weights(out / "weights.safetensors", runtime.get_weights(),
                 plan_sha256=manifest.plan_sha256)
    return out


@pytest.fixture(scope="module")
def setup(registry_server: Server, untrained: Path, digits_data, tmp_path_factory):
    register_plan(registry_server, MODEL, untrained)
    holdout = tmp_path_factory.mktemp("holdout") / "holdout.npz"
    Holdout(digits_data.x_test, digits_data.y_test).save(holdout)
    manifest = PlanManifest.load(untrained / "manifest.json")
    plan = (untrained / "plan.tflite").read_bytes()
    initial = PlanRuntime.from_dir(untrained).evaluate(digits_data.x_test, digits_data.y_test)
    return manifest, plan, holdout, initial.accuracy


def settings(server: Server, holdout: Path, **kw) -> RunSettings:
    base = {"server_url": server.url, "model": MODEL, "admin_key": server.admin_key,
            "run_name": "fl-test", "num_rounds": 2, "target_clients": 5, "min_reports": 3,
            "holdout_path": str(holdout), "eval_clients": 2, "query_timeout_s": 10.0,
            "train_timeout_s": 60.0, "eval_timeout_s": 30.0, "poll_interval_s": 0.05,
            "base_epochs": 2, "lr": 0.1, "gate_max_drop": 0.05}
    return RunSettings(**{**base, **kw})


def test_a_run_publishes_better_versions_refuses_nan_and_resumes(
    registry_server: Server, setup, digits_data
) -> None:
    manifest, plan, holdout, initial_accuracy = setup
    app = digits_client_app(plan, manifest, digits_data.x_train, digits_data.y_train,
                            ["honest", "honest", "honest", "honest", "nan"])
    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        with federation(app, 5) as (grid, _):
            result = run_federation(grid, settings(registry_server, holdout), client=client)
        reports = result.reports
        assert [r.server_round for r in reports] == [1, 2]
        assert all(r.ok for r in reports), [r.failure for r in reports]
        for r in reports:
            assert len(r.accepted) == 4 and r.refused_reasons == {"not-finite": 1}
            assert r.metrics["clients.nodes"] == 2.0
        assert reports[1].metrics["holdout.accuracy"] > initial_accuracy + 0.3
        v2, v3 = (r.published_version for r in reports)
        info = client.version(MODEL, v3)  # type: ignore[arg-type]
        assert info.lineage.parent_version == v2 and info.lineage.federated_round == 2
        assert info.lineage.num_clients == 4 and info.lineage.strategy == "fedavg"
        assert info.lineage.drift_summary is not None
        assert info.metrics["holdout.accuracy"] == reports[1].metrics["holdout.accuracy"]
        assert client.alias(MODEL, "canary").version == v3  # type: ignore[union-attr]
        assert client.production_version(MODEL) == 1  # the gate never touches production

        # restart the same run with a larger budget: it resumes after round 2
        with federation(app, 5) as (grid, _):
            resumed = run_federation(grid, settings(registry_server, holdout, num_rounds=3),
                                     client=client)
        assert [r.server_round for r in resumed.reports] == [3]
        v4 = resumed.reports[0].published_version
        assert client.version(MODEL, v4).lineage.parent_version == v3  # type: ignore[arg-type]
        with federation(app, 5) as (grid, _):
            done = run_federation(grid, settings(registry_server, holdout, num_rounds=3),
                                  client=client)
        assert done.reports == []


def test_too_few_nodes_fail_every_round_and_publish_nothing(
    registry_server: Server, setup, digits_data
) -> None:
    manifest, plan, holdout, _ = setup
    app = digits_client_app(plan, manifest, digits_data.x_train, digits_data.y_train,
                            ["honest", "ineligible", "ineligible"])
    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        with federation(app, 3) as (grid, _):
            result = run_federation(grid, settings(registry_server, holdout, run_name="starved",
                                                   target_clients=2, min_reports=2), client=client)
        assert [r.status for r in result.reports] == ["failed", "failed"]
        assert client.latest_run_version(MODEL, "starved") is None
        assert result.weights.keys() == set(manifest.weight_names())
