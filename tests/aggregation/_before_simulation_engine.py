"""The same round loop on Flower's own simulation engine (``run_simulation``, Ray backend).

One small run (3 virtual nodes, 2 rounds): it proves the ServerApp-side loop needs nothing but
Flower's Grid, whichever engine provides it. The in-process harness (``harness.py``) covers the
behaviour in detail without Ray's start-up cost.
"""

from __future__ import annotations

import os

import pytest
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregation.rounds import RoundRunner, RoundSettings, RunResult
from aggregation.selection import UniformSelection
from aggregation.strategies import build_strategy
from aggregation.validation import RefusalReason
from tests.aggregation.toy import toy_client_app, toy_manifest, zeros


@pytest.mark.slow
def test_round_runner_on_flowers_simulation_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.simulation import run_simulation

    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0",
                       "RAY_DEDUP_LOGS": "0"}.items():
        monkeypatch.setenv(key, value)
    out: dict[str, RunResult] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        # timeouts are upper bounds: Ray starts its actors slowly on a loaded machine
        settings = RoundSettings(model="toy", target_clients=3, min_reports=2,
                                 poll_interval_s=0.1, query_timeout_s=240, train_timeout_s=240)
        runner = RoundRunner(grid, toy_manifest(), build_strategy("fedavg"), UniformSelection(),
                             settings=settings)
        out["result"] = runner.run(zeros(), num_rounds=2)

    run_simulation(server_app=server, client_app=toy_client_app(["honest", "honest", "nan"]),
                   num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0},
                                   "init_args": {"num_cpus": min(2, os.cpu_count() or 1)}})
    reports = out["result"].reports
    assert [r.status for r in reports] == ["ok", "ok"]
    for r in reports:
        assert len(r.accepted) == 2 and r.refused_count(RefusalReason.NOT_FINITE) == 1
    assert float(out["result"].weights["dense/bias"].mean()) > 0
