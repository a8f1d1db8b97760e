"""The device's training semantics: batch rules, examples trained, weighting, order seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.errors import InputError
from edgefleet.runtime import PlanRuntime, order_seed, reported_examples


@pytest.fixture()
def runtimes(digits_plan_dir: Path) -> tuple[PlanRuntime, PlanRuntime]:
    return PlanRuntime.from_dir(digits_plan_dir), PlanRuntime.from_dir(digits_plan_dir)


def test_steps_and_examples_trained_per_rule(runtimes: tuple[PlanRuntime, PlanRuntime],
                                             digits_data: Dataset) -> None:
    rt, _ = runtimes
    x, y = digits_data.x_train[:70], digits_data.y_train[:70]  # batch 32: 2 full + 6 left
    wrap = rt.fit(x, y, epochs=2, lr=0.0, batch_rule="wrap")
    drop = rt.fit(x, y, epochs=2, lr=0.0, batch_rule="drop")
    short = rt.fit(x, y, epochs=2, lr=0.0, batch_rule="short")
    assert (wrap.steps, wrap.examples_trained, wrap.examples) == (6, 70, 192)
    assert (drop.steps, drop.examples_trained, drop.examples) == (4, 64, 128)
    assert (short.steps, short.examples_trained) == (6, 70)
    assert reported_examples(drop, 70, "examples-trained") == 64
    assert reported_examples(drop, 70, "local-size") == 70
    with pytest.raises(InputError, match="batch_rule"):
        rt.fit(x, y, batch_rule="pad")
    with pytest.raises(InputError, match="weighting"):
        reported_examples(drop, 70, "weights")


def test_short_batch_is_the_mean_update_of_its_rows(runtimes: tuple[PlanRuntime, PlanRuntime],
                                                    digits_data: Dataset) -> None:
    a, b = runtimes
    w0 = a.get_weights()
    x, y = digits_data.x_train[:8], digits_data.y_train[:8]
    a.fit(x, y, epochs=1, lr=0.1, batch_rule="short", orders=[np.arange(8)])
    b.set_weights(w0)
    b.train_step(np.tile(x, (4, 1)), np.tile(y, 4), 0.1)  # the same 8 rows, 4 times: same mean
    wa, wb = a.get_weights(), b.get_weights()
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-6
    assert any(float(np.abs(wa[k] - w0[k]).max()) > 1e-4 for k in wa)


def test_given_orders_are_used_as_given(runtimes: tuple[PlanRuntime, PlanRuntime],
                                        digits_data: Dataset) -> None:
    a, b = runtimes
    w0 = a.get_weights()
    x, y = digits_data.x_train[:64], digits_data.y_train[:64]
    order = np.random.default_rng(3).permutation(64)
    a.fit(x, y, epochs=1, lr=0.1, batch_rule="drop", orders=[order])
    b.set_weights(w0)
    for s in range(2):  # the same two batches by hand
        idx = order[s * 32:(s + 1) * 32]
        b.train_step(x[idx], y[idx], 0.1)
    wa, wb = a.get_weights(), b.get_weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(InputError, match="orders"):
        a.fit(x, y, epochs=2, orders=[order])  # one epoch of orders for two epochs
    with pytest.raises(InputError, match="orders"):
        a.fit(x, y, orders=[np.array([0, 64])])


def test_order_seed_differs_per_device_and_round() -> None:
    seeds = {order_seed(7, r, d) for r in range(1, 4) for d in range(50)}
    assert len(seeds) == 150
    assert order_seed(7, 2, 9) == order_seed(7, 2, 9)
    assert order_seed(7, 2, 9) != order_seed(8, 2, 9)
