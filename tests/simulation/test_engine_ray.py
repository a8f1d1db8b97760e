"""The harness and the round loop on Flower's real simulation engine (Ray): a private local
instance, and a Ray cluster the module starts once and stops (its head on 127.0.0.1).

Both runs of the same experiment give the same results file, every output is written, and no
worker loaded TensorFlow. On the same cluster, :class:`aggregation.rounds.RoundRunner` alone
(``run_simulation`` with a toy ClientApp, one node sending NaN weights) proves the ServerApp-side
loop needs nothing but Flower's Grid, whichever engine provides it; the in-process harness
(``tests/aggregation/harness.py``) covers that loop in detail without Ray's start-up cost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.engine import RUN_TOKEN, run_experiment, stop_leftovers
from simulation.results import ExperimentResult
from tests.simulation.conftest import experiment

pytestmark = pytest.mark.slow

KW = {"rounds": 2, "clients": {"count": 6, "per_round": 3},
      "drift": [{"kind": "brightness", "fraction": 0.5, "start_round": 2}]}
OUTPUTS = ("results.jsonl", "results.csv", "summary.json", "timings.jsonl", "run.json",
           "report.html", "plots/accuracy.png", "plots/clients.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_head(log: Path) -> Iterator[str]:
    """A Ray head on 127.0.0.1 in its own session; stopped (by its process group and run
    token) on exit. Yields its GCS address once ``ray start`` reports the runtime started (its
    raylet registered with the GCS)."""
    port, token = _free_port(), uuid.uuid4().hex
    temp = Path(f"/tmp/ray-{token[:8]}")
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, RUN_TOKEN: token, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # an upper bound: a loaded machine starts it slowly
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        stop_leftovers(token, grace_s=5)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> ExperimentResult:
    """The experiment on a private local Ray instance (before the module's cluster starts)."""
    return run_experiment(experiment(tmp_path_factory.mktemp("ray") / "local", **KW))


@pytest.fixture(scope="module")
def ray_cluster(local_run: ExperimentResult, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    """One Ray head for the module's cluster runs (after the private local run)."""
    with ray_head(tmp_path_factory.mktemp("ray-head") / "ray-start.log") as address:
        yield address


def test_the_local_engine_writes_every_output(local_run: ExperimentResult) -> None:
    out = local_run.out_dir
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert local_run.run_info["worker_tf_loaded"] is False
    assert local_run.run_info["peak_memory_mb"] > 100
    assert [r["status"] for r in local_run.rows] == ["ok", "ok"]


def test_the_ray_cluster_gives_the_local_engines_results(
        local_run: ExperimentResult, ray_cluster: str, tmp_path: Path) -> None:
    remote = run_experiment(experiment(tmp_path / "cluster", engine={"ray_address": ray_cluster},
                                       **KW))
    assert remote.run_info["ray_address"] == ray_cluster
    assert remote.run_info["worker_tf_loaded"] is False
    assert (tmp_path / "cluster" / "results.jsonl").read_text() == \
        (local_run.out_dir / "results.jsonl").read_text()


def test_round_runner_on_flowers_simulation_engine(ray_cluster: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """3 virtual nodes (one sends NaN weights), 2 rounds of the production round loop."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from aggregation.rounds import RoundRunner, RoundSettings, RunResult
    from aggregation.selection import UniformSelection
    from aggregation.strategies import build_strategy
    from aggregation.validation_types import RefusalReason
    from tests.aggregation.toy import toy_client_app, toy_manifest, zeros

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
                                   "init_args": {"address": ray_cluster}})
    reports = out["result"].reports
    assert [r.status for r in reports] == ["ok", "ok"]
    for r in reports:
        assert len(r.accepted) == 2 and r.refused_count(RefusalReason.NOT_FINITE) == 1
    assert float(out["result"].weights["dense/bias"].mean()) > 0
