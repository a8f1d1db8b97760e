"""Flower's simulation runtime, in process, without Ray: for testing the round loop.

This assembles the same pieces as ``flwr.simulation.run_simulation`` (its ``_main_loop``): an
in-memory ``LinkState`` with a pre-registered run, Flower's real :class:`InMemoryGrid` for the
ServerApp side, virtual SuperNodes registered in the state, and Flower's simulation runtime
(``vce_api.run_api``) moving messages between the state and the ``ClientApp``. The one
substitution is the backend: :class:`simulation.inprocess.ThreadBackend` calls the ``ClientApp``
in a worker thread where Flower's ``RayBackend`` would call it in a Ray actor (Ray costs ~1.5 GB
and tens of seconds per start-up on this machine). Every message still goes through the
LinkState with its TTL, ids and reply checks.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from simulation.inprocess import ThreadBackend


@contextmanager
def federation(client_app: ClientApp, num_nodes: int, *, workers: int | None = None
               ) -> Iterator[tuple[InMemoryGrid, dict[int, int]]]:
    """Yield Flower's ``InMemoryGrid`` and ``{node_id: partition_id}`` of running virtual nodes.

    Node contexts carry ``partition-id``/``num-partitions`` in ``node_config``, as in Flower's
    simulation. The runtime stops (and its threads are joined) on exit.
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
    # the ServerApp's identity, as flwr's run_simulation sets it
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    nodes = vce_api._register_nodes(num_nodes, state_factory)
    stores = vce_api._register_node_info_stores(nodes, run, None)
    stop = threading.Event()
    runtime = threading.Thread(
        target=vce_api.run_api,
        args=(lambda: client_app, lambda: ThreadBackend({}, workers or num_nodes), nodes,
              state_factory, stores, stop, VceMetrics()),
        daemon=True,
    )
    runtime.start()
    try:
        yield grid, dict(nodes)
    finally:
        stop.set()
        runtime.join(timeout=30)
