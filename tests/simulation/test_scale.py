"""What keeps large simulated fleets cheap: the indexed LinkState and the fast partitioners."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from simulation.engine import index_linkstate, run_experiment
from simulation.partitioners import PartitionSpec, partition
from tests.simulation.conftest import experiment


def _state_with_messages(nodes: int, per_node: int) -> tuple[Any, list[int], list[str]]:
    """An in-memory LinkState of ``nodes`` nodes holding ``per_node`` messages for each."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    run = Run.create_empty(run_id=secrets.randbits(63))
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    state: Any = factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    ids = sorted(vce_api._register_nodes(nodes, factory))
    msgs = [Message(RecordDict(), n, MessageType.QUERY, ttl=600) for _ in range(per_node)
            for n in ids]
    return state, ids, [str(i) for i in grid.push_messages(msgs)]


def _poll(state: Any, nodes: list[int], pushed: list[str], get: Any) -> list[list[int]]:
    """Poll every node for one message until none is left, as Flower's simulation runtime
    does; the push positions delivered in each pass."""
    passes: list[list[int]] = []
    while True:
        got = [pushed.index(m.metadata.message_id) for n in nodes for m in get(state, n, 1)]
        if not got:
            return passes
        passes.append(got)


def test_indexed_linkstate_delivers_what_flowers_scan_delivers() -> None:
    index_linkstate()
    scan = InMemoryLinkState._edgefleet_scan_get_message_ins  # type: ignore[attr-defined]
    assert InMemoryLinkState.get_message_ins is not scan
    a, nodes_a, pushed_a = _state_with_messages(5, 3)
    b, nodes_b, pushed_b = _state_with_messages(5, 3)
    by_scan = _poll(a, nodes_a, pushed_a, scan)
    indexed = _poll(b, nodes_b, pushed_b, lambda s, n, k: s.get_message_ins(node_id=n, limit=k))
    assert indexed == by_scan
    assert len(indexed) == 3  # one message per node and pass, each message once:
    assert sorted(i for p in indexed for i in p) == list(range(15))
    assert all(m.metadata.delivered_at for m in b.message_ins_store.values())
    # every undelivered message of a node at once, in push order, then none
    c, nodes_c, pushed_c = _state_with_messages(3, 4)
    first = c.get_message_ins(node_id=nodes_c[1], limit=None)
    assert [pushed_c.index(m.metadata.message_id) for m in first] == [1, 4, 7, 10]
    assert c.get_message_ins(node_id=nodes_c[1], limit=None) == []


def test_inprocess_engine_writes_results_and_peak_memory(tmp_path: Path) -> None:
    exp = experiment(tmp_path, rounds=2, engine={"kind": "inprocess"})
    res = run_experiment(exp)
    assert [r["round"] for r in res.rows] == [1, 2]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["engine"] == "in-process" and info["peak_memory_mb"] > 0
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2


def test_partitions_of_many_clients_cover_every_example_once() -> None:
    y = np.random.default_rng(0).integers(0, 5, 40_000)
    for spec in (PartitionSpec("dirichlet", alpha=0.5), PartitionSpec("pathological")):
        parts = partition(y, 2_000, spec, seed=1)
        assert len(parts) == 2_000 and min(len(p) for p in parts) >= 1
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
