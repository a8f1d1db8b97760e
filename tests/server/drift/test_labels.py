"""Performance drift and label-prior shift: verdicts of their own, from the label histograms."""

from __future__ import annotations

import numpy as np
import pytest

from server.drift import DriftThresholds, compute_drift
from tests.server.drift.support import gaussian_reference, summarise

TRIALS = 300


def _labelled(n: int, accuracy: float, rng: np.random.Generator, shares: list[float] | None = None):
    """``n`` rows with 3-class probabilities, labels drawn by ``shares``, right at ``accuracy``."""
    labels = rng.choice(3, size=n, p=shares or [1 / 3, 1 / 3, 1 / 3])
    right = rng.random(n) < accuracy
    pred = np.where(right, labels, (labels + rng.integers(1, 3, size=n)) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), pred] = 0.8
    return rng.normal(size=(n, 4)), probs, labels


def test_performance_verdict_needs_a_validation_accuracy_and_enough_labels() -> None:
    ref, _ = gaussian_reference(4)
    rng = np.random.default_rng(0)
    x, probs, labels = _labelled(200, 0.6, rng)
    summary = summarise(ref, x, probs, labels)
    assert compute_drift(summary, ref).performance.verdict == "insufficient"
    report = compute_drift(summary, ref, validation_accuracy=0.9)
    perf = report.performance
    assert perf.verdict == "drift" and report.verdicts.performance == "drift"
    assert perf.n_labelled == 200 and perf.accuracy == pytest.approx(0.6, abs=0.08)
    assert perf.null_accuracy == pytest.approx(0.88) and perf.pvalue is not None
    assert perf.accuracy is not None and perf.accuracy_lower_bound is not None
    assert perf.accuracy_lower_bound < perf.accuracy
    assert "performance" in report.verdicts.drifted and report.verdict == "no_drift"
    few = summarise(ref, x[:20], probs[:20], labels[:20])
    assert compute_drift(few, ref, validation_accuracy=0.9).performance.verdict == "insufficient"
    unlabelled = summarise(ref, x, probs)
    assert compute_drift(unlabelled, ref, validation_accuracy=0.9).performance.n_labelled == 0


@pytest.mark.parametrize("n", [30, 100, 1000])
def test_performance_false_alarms_and_detection(n: int) -> None:
    """At the validation accuracy: <= 5 % alarms; 0.15 below it: found, more often with more n
    (measured 48 %, 93 %, 100 %)."""
    ref, _ = gaussian_reference(4)
    th = DriftThresholds()
    rng = np.random.default_rng(n)
    alarms = found = 0
    for _ in range(TRIALS):
        same = compute_drift(
            summarise(ref, *_labelled(n, 0.9, rng)), ref, th, validation_accuracy=0.9
        )
        worse = compute_drift(
            summarise(ref, *_labelled(n, 0.75, rng)), ref, th, validation_accuracy=0.9
        )
        alarms += same.performance.verdict == "drift"
        found += worse.performance.verdict == "drift"
    print(
        f"\nperformance drift, n={n}: false alarms {alarms / TRIALS:.3f}, "
        f"0.90 -> 0.75 found {found / TRIALS:.3f}"
    )
    assert alarms / TRIALS <= 0.05
    assert found / TRIALS >= {30: 0.4, 100: 0.9, 1000: 1.0}[n]


def test_a_drop_within_the_tolerance_is_not_performance_drift() -> None:
    ref, _ = gaussian_reference(4)
    rng = np.random.default_rng(5)
    x, probs, labels = _labelled(20_000, 0.89, rng)  # 0.01 below: inside the 0.02 tolerance
    report = compute_drift(summarise(ref, x, probs, labels), ref, validation_accuracy=0.9)
    assert report.performance.verdict == "no_drift"


def test_label_prior_shift() -> None:
    ref, _ = gaussian_reference(4)  # training labels: three classes, about a third each
    rng = np.random.default_rng(6)
    same = compute_drift(summarise(ref, *_labelled(600, 0.9, rng)), ref)
    assert same.label_prior.verdict == "no_drift" and same.label_prior.effect is not None
    assert abs(same.label_prior.effect) < 0.02
    skewed = compute_drift(summarise(ref, *_labelled(600, 0.9, rng, [0.6, 0.2, 0.2])), ref)
    prior = skewed.label_prior
    assert prior.verdict == "drift" and skewed.verdicts.label_prior == "drift"
    assert prior.class_shares[0] == pytest.approx(0.6, abs=0.06)
    assert prior.effect == pytest.approx(0.32, abs=0.08)  # Σ (p - q)² / q = 0.32
    few = compute_drift(summarise(ref, *_labelled(20, 0.9, rng, [0.9, 0.05, 0.05])), ref)
    assert few.label_prior.verdict == "insufficient"
    lax = DriftThresholds(prior_min=0.5)  # the effect floor is configurable per model
    again = summarise(ref, *_labelled(600, 0.9, rng, [0.6, 0.2, 0.2]))
    assert compute_drift(again, ref, lax).label_prior.verdict == "no_drift"


def test_label_prior_false_alarms() -> None:
    ref, _ = gaussian_reference(4)
    rng = np.random.default_rng(7)
    shares = (np.asarray(ref.class_counts) / sum(ref.class_counts)).tolist()
    alarms = sum(
        compute_drift(summarise(ref, *_labelled(100, 0.9, rng, shares)), ref).label_prior.verdict
        == "drift"
        for _ in range(TRIALS)
    )
    assert alarms / TRIALS <= 0.05
