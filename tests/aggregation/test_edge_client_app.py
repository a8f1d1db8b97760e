"""The ServerApp's round loop with the edge agent's real ClientApp (``edge_client.flower_client``).

Each virtual node gets a device data directory prepared with the agent's own stores — the plan
installed by :class:`edge_client.models.ModelManager`, labelled examples in
:class:`edge_client.store.LabelStore`, a drift summary in :class:`edge_client.storage.StateStore` —
and runs the agent's ClientApp on Flower's in-memory grid and runtime. The ServerApp side is the
real ``run_federation`` against the real server. This pins the message contract between the two
packages: query (eligibility, drift, plan sha), train (epochs, lr, seed, plan-sha256), evaluate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from aggregation.evaluation import Holdout
from aggregation.registry_client import RegistryClient
from aggregation.server_app import run_federation
from aggregation.settings import RunSettings
from edge_client.flower_client import make_client_app
from edge_client.models import ModelManager
from edge_client.storage import StateStore
from edge_client.store import LabelStore
from edgefleet.drift import DriftAccumulator
from edgefleet.plan import PlanManifest
from tests.aggregation.conftest import Server, register_plan
from tests.aggregation.harness import federation
from tests.aggregation.test_federation import untrained  # noqa: F401  (fixture)

MODEL = "digits-edge"
NODES = 3


@pytest.fixture(scope="module")
def devices(untrained: Path, digits_data, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
            ) -> list[Path]:
    """One agent data directory per node: plan v1 installed, a label share, a drift summary."""
    manifest = PlanManifest.load(untrained / "manifest.json")
    dirs = []
    for i in range(NODES):
        d = tmp_path_factory.mktemp(f"device{i}")
        ModelManager(d / "models").install_dir(untrained, manifest.name, 1)
        x, y = digits_data.x_train[i::NODES], digits_data.y_train[i::NODES]
        labels = LabelStore(d / "labels.sqlite3")
        labels.add(manifest.name, x, y)
        labels.close()
        acc = DriftAccumulator(manifest.reference, model=manifest.name, version=1)  # type: ignore[arg-type]
        acc.update(x + (4.0 if i == 0 else 0.0))  # device 0 sees brighter digits: drifted
        state = StateStore(d / "state.sqlite3")
        state.save_drift(manifest.name, 1, acc.to_summary().model_dump_json())
        state.close()
        dirs.append(d)
    return dirs


def on_devices(app: ClientApp, dirs: list[Path]) -> ClientApp:
    """Run ``app`` with ``data-dir`` (and ``eligibility=always``) set from the partition id."""
    wrapper = ClientApp()

    def call(msg: Message, context: Context) -> Message:
        pid = int(str(context.node_config["partition-id"]))
        node_config = {**context.node_config, "data-dir": str(dirs[pid]), "eligibility": "always"}
        ctx = Context(run_id=context.run_id, node_id=context.node_id, node_config=node_config,
                      state=context.state, run_config=context.run_config)
        return app(msg, ctx)

    wrapper.query()(call)
    wrapper.train()(call)
    wrapper.evaluate()(call)
    return wrapper


def test_run_with_the_agents_client_app(registry_server: Server, untrained: Path,  # noqa: F811
                                        devices: list[Path], digits_data, tmp_path: Path) -> None:
    register_plan(registry_server, MODEL, untrained)
    holdout = tmp_path / "holdout.npz"
    Holdout(digits_data.x_test, digits_data.y_test).save(holdout)
    settings = RunSettings(
        server_url=registry_server.url, model=MODEL, admin_key=registry_server.admin_key,
        run_name="edge", num_rounds=2, target_clients=3, min_reports=3, eval_clients=3,
        holdout_path=str(holdout), poll_interval_s=0.05, query_timeout_s=30.0,
        train_timeout_s=60.0, eval_timeout_s=30.0, base_epochs=2, max_extra_epochs=2, lr=0.1,
        selection="drift", gate_max_drop=0.05,
    )
    app = on_devices(make_client_app(), devices)
    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        with federation(app, NODES) as (grid, nodes):
            result = run_federation(grid, settings, client=client)
        by_pid = {p: n for n, p in nodes.items()}
        first, second = result.reports
        assert first.ok and second.ok, (first.failure, second.failure)
        assert sorted(first.accepted) == sorted(nodes) and first.refused == {}
        assert first.metrics["clients.nodes"] == 3.0 and "clients.eval-acc" in first.metrics
        assert second.metrics["holdout.accuracy"] > 0.5
        # round 1 trains without a query: nothing is known of the devices' drift yet; round 2
        # steers with the summaries their round-1 train replies carried
        assert set(result.outcomes[0].drift_scores.values()) == {None}
        scores = result.outcomes[1].drift_scores
        assert scores[by_pid[0]] > 0.5  # the brighter device
        assert scores[by_pid[1]] < 0.1 and scores[by_pid[2]] < 0.1
        latest = client.latest_run_version(MODEL, "edge")
        assert latest is not None and latest.lineage.federated_round == 2
        assert latest.lineage.drift_summary is not None
        assert latest.lineage.drift_summary["n"] == sum(
            len(digits_data.y_train[i::NODES]) for i in range(NODES))
    assert np.isfinite(second.metrics["train.train-loss"])
