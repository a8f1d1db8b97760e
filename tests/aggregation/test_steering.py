"""Drift steering: bounded extra epochs, bounded and normalised aggregation weights, and the
records handed to Flower's strategies (which must then weight by ``agg-weight``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from aggregation.errors import SettingsError
from aggregation.selection import Candidate
from aggregation.steering import (
    SteeringConfig,
    aggregation_weights,
    node_train_config,
    strategy_contents,
)
from edgefleet.flower_keys import AGG_WEIGHT as AGG_WEIGHT_KEY


@pytest.mark.parametrize("score", [None, -3.0, 0.0, 0.3, 0.5, 1.0, 42.0, float("nan")])
def test_local_epochs_and_boost_stay_within_bounds(score: float | None) -> None:
    cfg = SteeringConfig(base_epochs=2, max_extra_epochs=3, drift_boost=2.0, max_drift_boost=0.5)
    assert 2 <= cfg.local_epochs(score) <= 5
    assert 0.0 <= cfg.boost(score) <= 0.5


def test_drifted_nodes_train_more() -> None:
    cfg = SteeringConfig(base_epochs=1, max_extra_epochs=2)
    assert [cfg.local_epochs(s) for s in (None, 0.0, 0.5, 1.0)] == [1, 1, 2, 3]
    conf = node_train_config(Candidate(1, 10, 1.0), cfg)
    assert conf == {"epochs": 3, "lr": cfg.lr, "drift-score": 1.0}


def test_weights_are_normalised_and_the_drift_boost_is_bounded() -> None:
    cfg = SteeringConfig(drift_boost=10.0, max_drift_boost=0.5)
    w = aggregation_weights({1: 100, 2: 100, 3: 200}, {1: 1.0, 2: 0.0, 3: None}, cfg)
    assert sum(w.values()) == pytest.approx(1.0)
    # node 1: 100 * 1.5, node 2: 100 * 1, node 3: 200 * 1 -> 150 : 100 : 200
    assert w[1] / w[2] == pytest.approx(1.5)
    assert w[3] / w[2] == pytest.approx(2.0)


def test_no_boost_means_weighting_by_examples() -> None:
    w = aggregation_weights({1: 30, 2: 10}, {1: 0.0, 2: 1.0}, SteeringConfig(max_drift_boost=0))
    assert w == {1: pytest.approx(0.75), 2: pytest.approx(0.25)}


def test_weights_need_examples() -> None:
    with pytest.raises(SettingsError):
        aggregation_weights({1: 0}, {}, SteeringConfig())


@pytest.mark.parametrize("kwargs", [{"base_epochs": 0}, {"max_extra_epochs": -1}, {"lr": 0.0},
                                    {"max_drift_boost": -1.0}, {"missing_score": 2.0}])
def test_config_bounds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        SteeringConfig(**kwargs)  # type: ignore[arg-type]


def test_strategy_contents_keep_arrays_and_common_scalar_metrics() -> None:
    def reply(n: int, **metrics: float) -> RecordDict:
        return RecordDict({
            "weights": ArrayRecord({"w": Array(np.full(2, n, np.float32))}),
            "m": MetricRecord({"num-examples": n, **metrics}),
            "config": ConfigRecord({"drift": "{}"}),
        })

    out = strategy_contents(
        [reply(10, loss=0.5, acc=0.9), reply(30, loss=float("nan")), reply(5, loss=0.2)],
        [0.2, 0.5, 0.3],
    )
    assert [list(c.keys()) for c in out] == [["arrays", "metrics"]] * 3
    assert list(out[1]["metrics"].keys()) == ["num-examples", AGG_WEIGHT_KEY]  # NaN loss dropped
    assert out[0]["metrics"][AGG_WEIGHT_KEY] == 0.2
    assert out[2].array_records["arrays"]["w"].numpy().tolist() == [5.0, 5.0]
