"""Flower's simulation runtime in this process, without Ray: the fast engine for measurements.

This assembles what ``flwr.simulation.run_simulation`` assembles (its ``_main_loop``): an
in-memory ``LinkState`` with a registered run, Flower's :class:`InMemoryGrid` for the ServerApp
side, virtual SuperNodes registered in the state, and Flower's simulation runtime
(``vce_api.run_api``) moving every message through the LinkState (TTL, ids, reply checks) to the
ClientApp. The one substitution is the backend: :class:`ThreadBackend` calls the ClientApp in a
worker thread where Flower's ``RayBackend`` calls it in a Ray actor (Ray costs about 1.5 GB and
tens of seconds of start-up here). The round loop, the SimGrid clock, the ClientApp and the
plan runtime are the ones :func:`simulation.engine.run_experiment` runs, so a seed gives the same
rounds on both engines' message order (SimGrid releases replies in a fixed order).

:func:`federation_nodes` yields the grid and the node ids over running virtual nodes (the round
loop's tests use it, ``tests/aggregation/harness.py``), :func:`federation` the grid alone;
:func:`run_in_process` runs an experiment's rounds and returns its
:class:`~simulation.results.ExperimentResult` (no files written unless ``write`` is set).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from simulation.config import Experiment
from simulation.results import ExperimentResult


class ThreadBackend(Backend):
    """Run the ClientApp in the simulation runtime's worker threads (instead of Ray actors)."""

    def __init__(self, backend_config: BackendConfig, workers: int = 2) -> None:
        super().__init__(backend_config)
        self.workers = workers
        self.app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        self.app_fn = None

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.app_fn is None:
            raise ValueError("backend not built")
        try:
            return self.app_fn()(message=message, context=context), context
        except Exception as ex:  # what Flower's ClientAppActor.run does
            raise ClientAppException(str(ex)) from ex


@contextmanager
def federation_nodes(client_app: ClientApp, num_nodes: int, *, workers: int | None = None
                     ) -> Iterator[tuple[InMemoryGrid, dict[int, int]]]:
    """Yield Flower's ``InMemoryGrid`` and ``{node_id: partition_id}`` of ``num_nodes`` running
    virtual nodes, served by ``workers`` threads (``None``: one per node).

    Node contexts carry ``partition-id``/``num-partitions`` in ``node_config``, as in Flower's
    simulation. The runtime stops (and its thread is joined) on exit.
    """
    state_factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    run_id = secrets.randbits(63)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    state = state_factory.state()
    state.run_ids[run_id] = RunRecord(run=run)  # type: ignore[attr-defined]
    state.task_store[run.primary_task_id] = Task(  # type: ignore[attr-defined]
        task_id=run.primary_task_id, run_id=run_id
    )
    TaskIdentity.task_id = 1  # the ServerApp's identity, as run_simulation sets it
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    nodes = vce_api._register_nodes(num_nodes, state_factory)
    stores = vce_api._register_node_info_stores(nodes, run, None)
    stop = threading.Event()
    threads = workers or num_nodes
    runtime = threading.Thread(
        target=vce_api.run_api,
        args=(lambda: client_app, lambda: ThreadBackend({}, threads), nodes,
              state_factory, stores, stop, VceMetrics()),
        daemon=True,
    )
    runtime.start()
    try:
        yield grid, dict(nodes)
    finally:
        stop.set()
        runtime.join(timeout=30)


@contextmanager
def federation(client_app: ClientApp, num_nodes: int, *, workers: int = 2
               ) -> Iterator[InMemoryGrid]:
    """:func:`federation_nodes`' grid alone, served by ``workers`` threads (default 2)."""
    with federation_nodes(client_app, num_nodes, workers=workers) as (grid, _):
        yield grid


def run_in_process(exp: Experiment, *, workers: int = 2, write: bool = False,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   ) -> ExperimentResult:
    """Run ``exp``'s rounds on the in-process engine (``write``: also write its outputs)."""
    from simulation.client_app import make_sim_client_app
    from simulation.prepare import prepare_run
    from simulation.server import SimServer

    prepared = prepare_run(exp)
    server = SimServer(exp, prepared, on_round=on_round)
    client = make_sim_client_app(str(prepared.run_dir.resolve()),
                                 str(prepared.plan_dir.resolve()))
    started = time.monotonic()
    with federation(client, exp.clients.count, workers=workers) as grid:
        server.run_rounds(grid)
    epochs = server.epochs
    info = {"wall_s": round(time.monotonic() - started, 2), "engine": "in-process",
            "plan_dir": str(prepared.plan_dir),
            "epochs_mean": sum(epochs) / len(epochs) if epochs else None}
    result = ExperimentResult(exp, exp.out_dir(), server.rows, server.summary(),
                              server.weights, server.round_weights, info)
    if write:
        from simulation.report import write_outputs

        write_outputs(result, server.timings)
    return result
