"""The ClientApp both systems of ``bench_rounds_sim.py`` talk to, and the drift its replies carry.

:func:`client_app` speaks the message shapes of ``edge_client.flower_client``: a query reply
(eligible, a drift summary, ``num-examples``) and a train reply whose "training" is a numpy
perturbation of the global weights (a direction shared by the round plus per-node noise, so
validation's direction bound accepts it). :class:`DriftSource` is the packed drift summary
(``drift-packed``, :mod:`edgefleet.drift.packed`) each reply carries, against the profile of
:func:`reference`.

It imports numpy, flwr and the project's packages at its top: ``bench_rounds_sim.py`` imports it
in the child process only, after ``_common`` has put the repository root on ``sys.path``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from edgefleet.drift import DriftAccumulator, ReferenceProfile, build_reference
from edgefleet.drift.packed import pack

DRIFT_KINDS = 3  # nodes i, i + 3, ... share a drift summary (their inputs shift by 0.5 * kind)


def reference() -> ReferenceProfile:
    """The reference profile of 64 standard normal features and 10 classes (seeded)."""
    x = np.random.default_rng(1).normal(size=(1000, 64))
    return build_reference(x, np.zeros(1000, int), [f"p{i}" for i in range(64)], 10)


class DriftSource:
    """The packed drift summary of a node's next reply.

    Parameters
    ----------
    reference : ReferenceProfile
        The profile the summaries are made against.
    fresh : bool (default: False)
        Each node keeps its own cumulative drift accumulator and adds 20 rows before every
        reply, so every reply carries a new summary (as a device serving between rounds does);
        otherwise the nodes share :data:`DRIFT_KINDS` fixed summaries of 100 rows.
    """

    def __init__(self, reference: ReferenceProfile, fresh: bool = False) -> None:
        self._reference, self._fresh = reference, fresh
        self._summaries: dict[int, bytes] = {}
        for kind in range(DRIFT_KINDS):
            acc = DriftAccumulator(reference, model="digits", version=1)
            acc.update(np.random.default_rng(kind).normal(loc=0.5 * kind, size=(100, 64)))
            self._summaries[kind] = pack(acc.to_summary())
        self._accumulators: dict[int, tuple[DriftAccumulator, list[int]]] = {}

    def __call__(self, pid: int) -> bytes:
        """The summary partition ``pid`` sends now."""
        if not self._fresh:
            return self._summaries[pid % DRIFT_KINDS]
        if pid not in self._accumulators:
            self._accumulators[pid] = (
                DriftAccumulator(self._reference, model="digits", version=1), [0])
        acc, calls = self._accumulators[pid]
        calls[0] += 1
        acc.update(np.random.default_rng((pid, calls[0])).normal(
            loc=0.5 * (pid % DRIFT_KINDS), size=(20, 64)))
        return pack(acc.to_summary())


def client_app(reference: ReferenceProfile, fresh: bool = False) -> ClientApp:
    """Message shapes of ``edge_client.flower_client``; "training" is a numpy perturbation.

    ``fresh``: every reply carries a new cumulative summary of its node, see
    :class:`DriftSource`.
    """
    drift = DriftSource(reference, fresh)
    app = ClientApp()

    def examples(pid: int) -> int:
        return 50 + pid % 50

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = ConfigRecord({"eligible": True, "reasons": "[]",
                               "drift-packed": drift(pid), "plan-sha256": "0" * 64})
        metrics = MetricRecord({"num-examples": examples(pid)})
        return Message(RecordDict({"config": config, "metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = msg.content.config_records["config"].get("server-round", 0)
        assert isinstance(rnd, int)
        rng, common = np.random.default_rng((pid, rnd)), np.random.default_rng(rnd)
        arrays = msg.content.array_records["arrays"]
        # honest-looking updates: a shared direction plus per-node noise (validation's
        # direction bound refuses updates that do not point with the round's median)
        new = {k: (a.numpy() + common.normal(0, 0.01, a.shape)
                   + rng.normal(0, 0.005, a.shape)).astype(np.float32)
               for k, a in arrays.items()}
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": examples(pid), "train-loss": 0.5}),
            "config": ConfigRecord({"status": "ok", "drift-packed": drift(pid)}),
        })
        return Message(content, reply_to=msg)

    return app
