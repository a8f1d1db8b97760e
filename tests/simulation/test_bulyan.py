"""The stacked Bulyan (``aggregation.robust_bulyan``) aggregates exactly as Flower's Bulyan."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan
from flwr.serverapp.strategy.multikrum import select_multikrum

from aggregation.robust_bulyan import StackedBulyan, multikrum_rows
from aggregation.strategies import aggregate, build_strategy
from edgefleet.plan import WeightSpec


@pytest.fixture(autouse=True)
def _no_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's Bulyan runs ``gc.collect()`` per selected reply (its slowness, not its maths)."""
    import flwr.app.message.arrayrecord as arrayrecord

    monkeypatch.setattr(arrayrecord.gc, "collect", lambda *args: 0)


SHAPES = {"dense/kernel": (6, 5), "dense/bias": (5,), "out/kernel": (5, 3), "out/bias": (1,)}


def _updates(n: int, attackers: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` float32 updates around a common point; the first ``attackers`` far from it."""
    rng = np.random.default_rng(seed)
    centre = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    out = []
    for i in range(n):
        spread = 20.0 if i < attackers else 0.3
        out.append({k: (c + rng.normal(scale=spread, size=c.shape)).astype(np.float32)
                    for k, c in centre.items()})
    return out


def _replies(updates: list[dict[str, np.ndarray]], seed: int) -> list[Message]:
    rng = np.random.default_rng(seed + 1)
    msgs = []
    for i, u in enumerate(updates):
        meta = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0,
                        reply_to_message_id="q", group_id="1", created_at=time.time(),
                        ttl=600.0, message_type="train")
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
            "metrics": MetricRecord({"agg-weight": float(rng.integers(10, 60)),
                                     "num-examples": int(rng.integers(10, 60)),
                                     "train-loss": float(rng.random())})})
        msgs.append(Message(content=content, metadata=meta))  # type: ignore[call-overload]
    return msgs


def _both(n: int, f: int, attackers: int, seed: int) -> tuple[tuple, tuple]:  # type: ignore[type-arg]
    updates = _updates(n, attackers, seed)
    kwargs = {"num_malicious_nodes": f, "weighted_by_key": "agg-weight"}
    flower = Bulyan(**kwargs).aggregate_train(1, _replies(updates, seed))  # type: ignore[arg-type]
    ours = StackedBulyan(**kwargs).aggregate_train(1, _replies(updates, seed))  # type: ignore[arg-type]
    return flower, ours


@pytest.mark.parametrize(("n", "f", "attackers", "seed"),
                         [(7, 1, 1, 0), (11, 2, 2, 1), (20, 4, 4, 2), (20, 4, 0, 3),
                          (23, 5, 3, 4), (40, 4, 8, 5)])
def test_same_aggregate_as_flowers_bulyan_to_the_bit(n: int, f: int, attackers: int,
                                                     seed: int) -> None:
    (f_arrays, f_metrics), (o_arrays, o_metrics) = _both(n, f, attackers, seed)
    assert f_arrays is not None and o_arrays is not None
    assert list(o_arrays.keys()) == list(SHAPES)
    for k in SHAPES:
        a, b = f_arrays[k].numpy(), o_arrays[k].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # exact, not within a tolerance
    assert dict(o_metrics) == dict(f_metrics)


def test_the_same_rows_as_flowers_multikrum() -> None:
    updates = _updates(15, 3, 7)
    replies = _replies(updates, 7)
    contents = [m.content for m in replies]
    flat = np.stack([np.concatenate([u[k] for k in SHAPES], axis=None) for u in updates])
    chosen = select_multikrum(contents, 3, 9)
    assert [contents[i] for i in multikrum_rows(flat, 3, 9)] == chosen
    assert not set(multikrum_rows(flat, 3, 9)) & {0, 1, 2}  # the far updates are left out


def test_too_few_replies_give_nothing_as_flowers() -> None:
    flower, ours = _both(10, 2, 0, 8)  # Bulyan needs 4f + 3 = 11
    assert flower == (None, None) and ours == (None, None)


def test_replies_are_left_intact() -> None:
    replies = _replies(_updates(11, 2, 9), 9)
    StackedBulyan(num_malicious_nodes=2, weighted_by_key="agg-weight").aggregate_train(1, replies)
    assert all(list(m.content.array_records["arrays"].keys()) == list(SHAPES) for m in replies)


def test_registered_and_run_by_the_round_loops_aggregate() -> None:
    updates = _updates(11, 2, 10)
    spec = [WeightSpec(name=k, shape=list(s), dtype="float32") for k, s in SHAPES.items()]
    glob = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    strategy = build_strategy("bulyan-stacked", {"num_malicious_nodes": 2})
    assert isinstance(strategy, StackedBulyan)
    ours, _ = aggregate(strategy, 1, glob, _replies(updates, 10), spec)
    theirs, _ = aggregate(build_strategy("bulyan", {"num_malicious_nodes": 2}), 1, glob,
                          _replies(updates, 10), spec)
    for k in SHAPES:
        np.testing.assert_array_equal(ours[k], theirs[k])
