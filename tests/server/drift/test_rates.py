"""False-alarm and detection rates of the default verdict, over 200 seeded trials per case.

Run with ``pytest -s`` to see the rates; the assertions are the issue's acceptance criteria:
<= 5 % false alarms with nothing drifted and >= 95 % detection, at n = 500 per window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgefleet.datasets import stratified_split
from edgefleet.drift import ReferenceProfile, build_reference
from server.drift import compute_drift
from tests.server.drift.support import gaussian_reference, summarise

TRIALS = 200
N = 500


def drifted(ref: ReferenceProfile, x: np.ndarray) -> bool:
    return compute_drift(summarise(ref, x), ref).verdict == "drift"


@pytest.mark.parametrize("n_features", [10, 64])
def test_gaussian_false_alarms_and_half_sigma_shift_in_one_feature(n_features: int) -> None:
    ref, _ = gaussian_reference(n_features, m=5000, seed=n_features)
    rng = np.random.default_rng(1000 + n_features)
    alarms = detections = 0
    for _ in range(TRIALS):
        x = rng.normal(size=(N, n_features))
        alarms += drifted(ref, x)
        x[:, rng.integers(n_features)] += 0.5  # 0.5 sd mean shift in one random feature
        detections += drifted(ref, x)
    fa, det = alarms / TRIALS, detections / TRIALS
    print(
        f"\nGaussian, {n_features} features, n={N}, {TRIALS} trials: "
        f"false alarms {fa:.3f}, detection of a 0.5σ shift in one feature {det:.3f}"
    )
    assert fa <= 0.05
    assert det >= 0.95


def _noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: N(0, 1) added to every pixel (of 0..16), rounded and clipped."""
    return np.clip(np.round(x + rng.normal(0.0, 1.0, x.shape)), 0, 16)


def _brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brighter sensor: +1 on every pixel (of 0..16), clipped."""
    return np.clip(x + 1.0, 0, 16)


def test_digits_noise_and_brightness_shift() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all, y_all = digits.data.astype(np.float32), digits.target
    names = [f"pixel_{i}" for i in range(x_all.shape[1])]
    cases: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray] | None] = {
        "clean": None,
        "noise": _noise,
        "brightness": _brightness,
    }
    hits = dict.fromkeys(cases, 0)
    sizes = set()
    for trial in range(TRIALS):
        # a fresh stratified split per trial: reference = train split, window = test split
        train, test = stratified_split(y_all, N / len(y_all), seed=trial)
        ref = build_reference(x_all[train], y_all[train], names, 10)
        rng = np.random.default_rng(trial)
        sizes.add(len(test))
        for name, inject in cases.items():
            window = x_all[test] if inject is None else inject(x_all[test], rng)
            hits[name] += drifted(ref, window)
    rates = {k: v / TRIALS for k, v in hits.items()}
    print(
        f"\ndigits, 64 features, n={min(sizes)}-{max(sizes)} test samples, {TRIALS} trials: "
        f"false alarms {rates['clean']:.3f}, noise detected {rates['noise']:.3f}, "
        f"brightness shift detected {rates['brightness']:.3f}"
    )
    assert rates["clean"] <= 0.05
    assert rates["noise"] >= 0.95
    assert rates["brightness"] >= 0.95
