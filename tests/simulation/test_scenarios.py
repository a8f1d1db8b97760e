"""Drift scenarios: who drifts, when, and what each kind does to the data."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.config import DriftConfig
from simulation.scenarios import FeatureStats, Scenario

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 16, size=(200, 64)).astype(np.float32)
Y = np.repeat(np.arange(10), 20).astype(np.int32)
STATS = FeatureStats.of(X, (8, 8, 1))


def scenario(**kw: object) -> Scenario:
    return Scenario(DriftConfig(**kw), 100, 0, 0, STATS, 10)  # type: ignore[arg-type]


def drifted(s: Scenario, r: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return s.apply(X, Y, int(s.clients[0]), r)


def test_fraction_of_clients_and_untouched_others() -> None:
    s = scenario(kind="noise", fraction=0.3, start_round=5)
    assert len(s.clients) == 30
    other = next(c for c in range(100) if not s.affects(c))
    x, y = s.apply(X, Y, other, 10)
    assert x is X and y is Y
    x, _ = s.apply(X, Y, int(s.clients[0]), 4)  # before the start round
    assert np.array_equal(x, X)


@pytest.mark.parametrize("mode,expected", [
    ("sudden", [0, 1, 1, 1, 1, 1, 1, 1]),
    ("gradual", [0, 0.25, 0.5, 0.75, 1, 1, 1, 1]),
    ("recurring", [0, 1, 1, 0, 0, 1, 1, 0]),
])
def test_intensity_over_rounds(mode: str, expected: list[float]) -> None:
    s = scenario(start_round=2, mode=mode, ramp_rounds=4, period=2)
    assert [s.intensity(r) for r in range(1, 9)] == pytest.approx(expected)


def test_noise_adds_variance_not_mean() -> None:
    x, y = drifted(scenario(kind="noise", strength=0.5))
    diff = x - X
    assert np.array_equal(y, Y)
    assert diff.std() > 1.0 and abs(float(diff.mean())) < 0.5


def test_brightness_shifts_up_and_clips() -> None:
    x, _ = drifted(scenario(kind="brightness"))
    assert float((x - X).mean()) > 2.0 and x.max() <= STATS.high


def test_scale_multiplies() -> None:
    x, _ = drifted(scenario(kind="scale", strength=0.5))
    small = X < 8
    assert np.allclose(x[small], X[small] * 1.5)


def test_rotation_turns_the_image() -> None:
    img = np.zeros((1, 64), np.float32)
    img[0, 0 * 8 + 7] = 16.0  # top-right pixel
    s = scenario(kind="rotation", strength=3.0)  # 90 degrees
    x, _ = s.apply(img, Y[:1], int(s.clients[0]), 10)
    img8 = x.reshape(8, 8)
    hot = np.unravel_index(int(np.argmax(img8)), (8, 8))
    assert hot in {(0, 0), (7, 7)}  # the corner pixel went round by 90 degrees
    assert np.sum(img8 > 1.0) == 1


def test_feature_shift_moves_only_some_columns() -> None:
    x, _ = drifted(scenario(kind="feature_shift", features=0.25))
    moved = np.any(np.abs(x - X) > 1e-6, axis=0)
    assert 10 <= moved.sum() <= 20


def test_label_prior_keeps_mostly_the_chosen_classes() -> None:
    x, y = drifted(scenario(kind="label_prior", classes=[0, 1]))
    assert len(y) == len(x) < len(Y) and set(np.unique(y)) <= {0, 1}


def test_label_swap_is_concept_drift() -> None:
    x, y = drifted(scenario(kind="label_swap", classes=[3, 4]))
    assert np.array_equal(x, X)
    assert np.array_equal(y[Y == 3], np.full(20, 4)) and np.array_equal(y[Y == 4], np.full(20, 3))
    assert np.array_equal(y[(Y != 3) & (Y != 4)], Y[(Y != 3) & (Y != 4)])


def test_same_seed_same_drift() -> None:
    a, b = scenario(kind="noise"), scenario(kind="noise")
    assert np.array_equal(a.clients, b.clients)
    assert np.array_equal(drifted(a)[0], drifted(b)[0])
