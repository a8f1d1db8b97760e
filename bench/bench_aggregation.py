"""Server-side cost of our round pipeline beside Flower's plain FedAvg, in one run.

Part 1 — per-round server-side time with 100 and 1,000 simulated client replies (Flower
``Message`` objects built as a SuperLink would hand them over, with the digits MLP's weights,
4,810 parameters). *Ours* is everything the RoundRunner does between the replies arriving and the
new global model: drift scores of every candidate's DriftSummary, drift-prioritised selection with
the fairness bound and 1.3x over-selection, validation of every update (structure, names, shapes,
dtypes, finiteness, norm, relative norm bound, num-examples), drift-boosted weights, and
aggregation by Flower's FedAvg ``aggregate_train``. *Flower* is ``FedAvg().aggregate_train`` alone.

Part 2 — aggregation of 100 updates of 1M parameters (float32): ours (validation + FedAvg) vs
plain FedAvg.

Messaging, client training and the query step are not included (they are the same for both and
dominated by the network). Run: ``.venv/bin/python bench/bench_aggregation.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
from _common import Column, print_table
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from aggregation.selection import (
    Candidate,
    DriftPrioritisedSelection,
    DriftScorer,
    FairnessBound,
    over_selection_count,
)
from aggregation.steering import SteeringConfig, aggregation_weights, strategy_contents
from aggregation.strategies import aggregate, build_strategy
from aggregation.validation import UpdateValidator
from edgefleet.drift import DriftAccumulator, build_reference
from edgefleet.plan import WeightSpec

DIGITS_SPEC = [WeightSpec(name="dense/kernel", shape=[64, 64]),
               WeightSpec(name="dense/bias", shape=[64]),
               WeightSpec(name="out/kernel", shape=[64, 10]),
               WeightSpec(name="out/bias", shape=[10])]
BIG_SPEC = [WeightSpec(name="big/kernel", shape=[1000, 1000])]


def replies(spec: list[WeightSpec], n: int, seed: int = 0) -> list[Message]:
    """``n`` train replies (ArrayRecord + MetricRecord + ConfigRecord), as a Grid returns them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        weights = {w.name: rng.normal(0, 0.1, w.shape).astype(np.float32) for w in spec}
        ins = Message(RecordDict(), dst_node_id=i + 1, message_type="train")
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": 50 + i % 50, "train-loss": 0.5}),
            "config": ConfigRecord({"status": "ok"}),
        })
        out.append(Message(content, reply_to=ins))
    return out


def timed(fn: Callable[[], object], prepare: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs, each after an untimed ``prepare``."""
    times = []
    for _ in range(repeat):
        prepare()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Round:
    """One round's server-side work on prepared replies (ours, and Flower's FedAvg alone)."""

    def __init__(self, spec: list[WeightSpec], n: int, *, with_selection: bool) -> None:
        self.spec, self.n, self.with_selection = spec, n, with_selection
        self.global_weights = {w.name: np.zeros(w.shape, np.float32) for w in spec}
        self.strategy = build_strategy("fedavg")
        self.steering = SteeringConfig()
        self.msgs: list[Message] = []
        if with_selection:
            x = np.random.default_rng(1).normal(size=(1000, 64))
            ref = build_reference(x, np.zeros(1000, int), [f"p{i}" for i in range(64)], 10)
            self.scorer = DriftScorer(ref)
            self.summaries = []
            for i in range(n):
                acc = DriftAccumulator(ref, model="digits", version=1)
                acc.update(np.random.default_rng(i).normal(loc=(i % 3) * 0.5, size=(100, 64)))
                self.summaries.append(acc.to_summary())
            self.policy = FairnessBound(DriftPrioritisedSelection(), max_picks=3, window=5)

    def prepare(self) -> None:
        self.msgs = replies(self.spec, self.n)

    def ours(self) -> None:
        scores: dict[int, float | None] = {}
        if self.with_selection:
            cands = [Candidate(i + 1, 100, self.scorer.score(s))
                     for i, s in enumerate(self.summaries)]
            scores = {c.node_id: c.drift_score for c in cands}
            k = over_selection_count(max(1, int(self.n / 1.3)))
            self.policy.select(cands, k, 1, np.random.default_rng(0))
        validator = UpdateValidator(self.spec, self.global_weights)
        verdicts = [validator.validate(int(m.metadata.src_node_id), m.content,
                                       declared_examples=100) for m in self.msgs]
        validator.apply_relative_bound(verdicts)
        accepted = [v for v in verdicts if v.accepted]
        weights = aggregation_weights({v.node_id: int(v.num_examples or 0) for v in accepted},
                                      scores, self.steering)
        by_node = {int(m.metadata.src_node_id): m for m in self.msgs}
        msgs = [by_node[v.node_id] for v in accepted]
        contents = strategy_contents([m.content for m in msgs],
                                     [weights[v.node_id] for v in accepted])
        for m, c in zip(msgs, contents, strict=True):
            m.content = c
        aggregate(self.strategy, 1, self.global_weights, msgs, self.spec)

    def flower(self) -> None:
        FedAvg().aggregate_train(1, self.msgs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0

    rows = []
    for n in (100, 1000):
        r = Round(DIGITS_SPEC, n, with_selection=True)
        rows.append((f"round, {n} clients x 4,810 params", timed(r.ours, r.prepare, args.repeat),
                     timed(r.flower, r.prepare, args.repeat)))
    big = Round(BIG_SPEC, 100, with_selection=False)
    rows.append(("aggregate 100 updates x 1M params", timed(big.ours, big.prepare, args.repeat),
                 timed(big.flower, big.prepare, args.repeat)))

    print(f"\nserver-side time per round, median of {args.repeat} (message construction excluded)")
    print_table(
        [
            Column("case", 38),
            Column("ours (s)", 10, ".4f"),
            Column("FedAvg (s)", 11, ".4f"),
            Column("ratio", 7, ".2f", suffix="x"),
        ],
        [(name, ours, flower, ours / flower) for name, ours, flower in rows],
    )
    print("\nours = drift scores + selection (part 1 only) + validation + steering + FedAvg;"
          "\nFedAvg = flwr.serverapp.strategy.FedAvg.aggregate_train on the same replies.")


if __name__ == "__main__":
    main()
