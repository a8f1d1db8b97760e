"""Simulation test fixtures: one cached zoo plan per session, and an in-process engine.

The zoo plan is built once (TensorFlow in a child process) into a session cache directory, so
every test that names the same model and data reuses it. :func:`run_in_process` runs an
experiment's rounds through the production round loop on Flower's in-process simulation
runtime (``tests/aggregation/harness.py``: Flower's LinkState, InMemoryGrid and runtime, the
ClientApp in threads instead of Ray actors); the Ray engine itself is tested in
``test_engine_ray.py``. A failing test that used the ``fleet`` fixture (``test_fleet.py``)
gets the fleet's whole summary in its failure report (:meth:`FleetReport.render`: versions,
rounds, the loop's timeline with each rollout step's guard evidence and the rollback reason).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulation.config import Experiment, parse_experiment

MODEL = {"zoo": "mlp", "hidden": [32], "batch_size": 16}


@pytest.fixture(scope="session", autouse=True)
def plan_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("plan-cache")
    mp.setenv("EDGEFLEET_PLAN_CACHE", str(path))
    yield path
    mp.undo()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    fleet = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and fleet is not None:
        from simulation.fleet_report import FleetReport

        if isinstance(fleet, FleetReport):
            report.sections.append(("fleet report", fleet.render()))


def experiment(tmp: Path, **kw: Any) -> Experiment:
    """A small digits experiment in ``tmp`` (keyword arguments override its tables)."""
    data: dict[str, Any] = {"name": "t", "rounds": 3, "model": MODEL,
                            "clients": {"count": 12, "per_round": 6},
                            "partition": {"kind": "dirichlet", "alpha": 1.0},
                            "training": {"epochs": 2, "lr": 0.2},
                            "output": {"dir": str(tmp), "progress": False}}
    for k, v in kw.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) \
            else v
    return parse_experiment(data)


def run_in_process(exp: Experiment, *, workers: int = 2) -> Any:
    """Run ``exp``'s rounds in process; returns the :class:`~simulation.server.SimServer`."""
    from simulation.client_app import make_sim_client_app
    from simulation.prepare import prepare_run
    from simulation.server import SimServer
    from tests.aggregation.harness import federation

    prepared = prepare_run(exp)
    server = SimServer(exp, prepared, keep_weights=True)
    client = make_sim_client_app(str(prepared.run_dir), str(prepared.plan_dir))
    with federation(client, exp.clients.count, workers=workers) as (grid, _):
        server.run_rounds(grid)
    return server
