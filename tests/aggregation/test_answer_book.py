"""The round loop without a query every round (``query_max_age``), and FedAvg's weighted mean
from the validator's decoded arrays (``aggregation.linear``), bit for bit Flower's, also when the
replies are stacked in several blocks of coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from aggregation import linear
from aggregation.answer_book import AnswerBook
from aggregation.messages import QueryAnswer
from aggregation.rounds import RoundRunner, RoundSettings
from aggregation.selection import UniformSelection
from aggregation.strategies import build_strategy
from aggregation.validation import UpdateValidator
from aggregation.validation_types import ValidationBounds
from edgefleet.plan import WeightSpec
from tests.aggregation.harness import federation
from tests.aggregation.toy import toy_client_app, toy_manifest, zeros


class CountingGrid:
    """Flower's grid, counting the query messages pushed through it."""

    def __init__(self, grid) -> None:  # type: ignore[no-untyped-def]
        self.grid, self.queries = grid, 0

    def get_node_ids(self):  # type: ignore[no-untyped-def]
        return self.grid.get_node_ids()

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.queries += sum(1 for m in messages if m.metadata.message_type == "query")
        return self.grid.push_messages(messages)

    def pull_messages(self, ids):  # type: ignore[no-untyped-def]
        return self.grid.pull_messages(ids)


def _run(max_age: int) -> tuple[int, list[bool]]:
    with federation(toy_client_app(["honest"] * 4), 4) as (grid, _):
        counting = CountingGrid(grid)
        settings = RoundSettings(model="toy", target_clients=4, min_reports=2,
                                 over_selection=1.0, poll_interval_s=0.05, query_timeout_s=3,
                                 train_timeout_s=3, wait_for_nodes_s=5, query_max_age=max_age)
        rr = RoundRunner(counting, toy_manifest(), build_strategy("fedavg"),
                         UniformSelection(), settings=settings,
                         bounds=ValidationBounds(min_cosine=None))
        result = rr.run(zeros(), num_rounds=3)
    return counting.queries, [r.ok for r in result.reports]


def test_train_replies_renew_answers_so_no_round_needs_a_query() -> None:
    assert _run(0) == (12, [True, True, True])  # every node, every round
    # round 1 trains the nodes directly (no bootstrap query); later rounds know them from
    # their train replies
    assert _run(5) == (0, [True, True, True])


def test_stale_nodes_the_selection_passed_over_are_queried_within_a_budget() -> None:
    with federation(toy_client_app(["honest"] * 10), 10) as (grid, _):
        counting = CountingGrid(grid)
        settings = RoundSettings(model="toy", target_clients=2, min_reports=2,
                                 over_selection=1.0, poll_interval_s=0.05, query_timeout_s=3,
                                 train_timeout_s=3, wait_for_nodes_s=5, query_max_age=2,
                                 query_share=0.5)
        rr = RoundRunner(counting, toy_manifest(), build_strategy("fedavg"),
                         UniformSelection(), settings=settings,
                         bounds=ValidationBounds(min_cosine=None))
        reports = rr.run(zeros(), num_rounds=6).reports
        nodes = set(grid.get_node_ids())
    assert all(r.ok for r in reports)
    # one query a round (ceil(0.5 x 2 trained)), never to a node selected that round
    assert [len(r.queried) for r in reports] == [1] * 6 and counting.queries == 6
    assert all(not set(r.queried) & set(r.selected) for r in reports)
    # oldest first: while some node was never heard from, the query goes to such a node
    heard: set[int] = set()
    unheard_rounds = 0
    for r in reports:
        if nodes - heard - set(r.selected):
            unheard_rounds += 1
            assert r.queried[0] not in heard
        heard |= set(r.queried) | set(r.selected)
    assert unheard_rounds >= 2 and heard == nodes


def test_linear_mean_is_flowers_fedavg_to_the_bit() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    spec = [WeightSpec(name="k", shape=[8, 4]), WeightSpec(name="b", shape=[4])]
    glob = {"k": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}
    rng = np.random.default_rng(0)
    replies = []
    for n in range(1, 8):
        arrays = ArrayRecord({"k": Array(rng.normal(size=(8, 4)).astype(np.float32)),
                              "b": Array(rng.normal(size=4).astype(np.float32))})
        metrics = MetricRecord({"num-examples": 10 * n, "train-loss": float(n),
                                "agg-weight": float(10 * n)})
        content = RecordDict({"arrays": arrays, "metrics": metrics,
                              "config": ConfigRecord({"status": "ok"})})
        replies.append(Message(content, reply_to=Message(RecordDict(), n, "train")))
    validator = UpdateValidator(spec, glob, ValidationBounds(min_cosine=None))
    verdicts = [validator.validate(i, m.content) for i, m in enumerate(replies)]
    assert all(v.accepted and len(v.arrays) == 2 for v in verdicts)
    ours, merged = linear.weighted_mean(
        [v.arrays for v in verdicts], [float(10 * n) for n in range(1, 8)],
        [dict(next(iter(m.content.metric_records.values())).items()) for m in replies], spec)
    theirs, their_metrics = FedAvg(weighted_by_key="agg-weight").aggregate_train(1, replies)
    assert theirs is not None and their_metrics is not None
    for k in ("k", "b"):
        assert np.array_equal(ours[k], theirs[k].numpy())
    assert merged["train-loss"] == their_metrics["train-loss"]
    assert linear.applies(build_strategy("fedprox", {"proximal_mu": 0.1}))
    assert not linear.applies(build_strategy("krum"))


def _replies(n: int, spec: list[WeightSpec], seed: int = 0) -> list[Message]:
    rng = np.random.default_rng(seed)
    common = {w.name: rng.normal(size=w.shape) for w in spec}
    out = []
    for i in range(n):
        arrays = ArrayRecord({w.name: Array((common[w.name] + 0.3 * rng.normal(size=w.shape))
                                            .astype(np.float32)) for w in spec})
        metrics = MetricRecord({"num-examples": 10 + i, "train-loss": float(i),
                                "agg-weight": float(10 + i)})
        out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}),
                           reply_to=Message(RecordDict(), i + 1, "train")))
    return out


def test_blocked_validation_and_mean_match_flower_and_the_unblocked_norms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    spec = [WeightSpec(name="k", shape=[13, 7]), WeightSpec(name="b", shape=[1]),
            WeightSpec(name="c", shape=[5])]
    glob = {w.name: np.full(w.shape, 0.25, np.float32) for w in spec}
    replies = _replies(9, spec)
    whole = UpdateValidator(spec, glob, ValidationBounds(min_cosine=None)).validate_all(
        [(i, m.content, None) for i, m in enumerate(replies)])
    monkeypatch.setattr("aggregation.update_arrays.BLOCK_ELEMENTS", 20)  # 2 columns a block
    blocked_validator = UpdateValidator(spec, glob, ValidationBounds(min_cosine=None))
    blocked = blocked_validator.validate_all(
        [(i, m.content, None) for i, m in enumerate(replies)])
    for a, b in zip(whole, blocked, strict=True):
        assert a.accepted and b.accepted
        assert b.update_norm == pytest.approx(a.update_norm, rel=1e-6)
    ours, _ = linear.weighted_mean([v.arrays for v in blocked], [float(10 + i) for i in range(9)],
                                   [v.metrics[0] for v in blocked], spec)
    theirs, _ = FedAvg(weighted_by_key="agg-weight").aggregate_train(1, replies)
    assert theirs is not None
    for w in spec:
        assert np.array_equal(ours[w.name], theirs[w.name].numpy())


def test_a_train_reply_without_drift_keeps_the_answer_age() -> None:
    book = AnswerBook(2, None)
    summary = object()  # any summary the node sent in its query reply
    first = QueryAnswer(1, True, "", 10, summary, 0.7)  # type: ignore[arg-type]
    book.record(1, {1: first, 2: QueryAnswer(2, True, "", 10)})
    no_drift = Message(RecordDict({"config": ConfigRecord({"status": "ok"})}),
                       reply_to=Message(RecordDict(), 1, "train"))
    book.after_train(2, {1: first, 2: QueryAnswer(2, True, "", 10)},
                     {1: no_drift, 2: no_drift}, {})
    assert book.fresh(3, [1, 2]).keys() == {1, 2}
    later = book.fresh(4, [1, 2])
    assert 1 not in later  # queried again: its summary dates from round 1
    assert later[2].eligible  # never sent a summary: the train reply renews it
    assert book.fresh(3, [1])[1].drift_score == 0.7
