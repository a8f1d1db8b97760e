"""compute_drift: verdicts, small samples, the prediction test, thresholds and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.drift import DriftSummary, with_predictions
from edgefleet.errors import SummaryError
from server.drift import DriftThresholds, ThresholdPolicy, compute_drift
from tests.server.drift.support import gaussian_reference, summarise


def test_too_few_samples_is_insufficient_not_a_verdict() -> None:
    ref, _ = gaussian_reference(5)
    x = np.random.default_rng(0).normal(3.0, 1.0, size=(20, 5))  # drifted, but only 20 rows
    report = compute_drift(summarise(ref, x), ref)
    assert report.verdict == "insufficient"
    assert report.reason == "too few samples: 20 < 30"
    assert not report.holding and report.combined is None
    assert {f.status for f in report.features} == {"insufficient"}
    lax = compute_drift(summarise(ref, x), ref, DriftThresholds(min_samples=10))
    assert lax.verdict == "drift" and lax.n_drifted == 5
    empty = compute_drift(DriftSummary.empty(ref, model="gauss", version=1), ref)
    assert empty.verdict == "insufficient" and empty.max_psi is None


def test_report_names_the_drifted_feature_and_serialises() -> None:
    ref, _ = gaussian_reference(8)
    x = np.random.default_rng(1).normal(size=(2000, 8))
    x[:, 3] += 1.0
    x[:10, 5] = np.nan
    report = compute_drift(summarise(ref, x), ref)
    assert report.verdict == "drift"
    assert report.drifted_features == ["f3"]
    assert report.share_drifted == pytest.approx(1 / 8)
    f3 = report.features[3]
    assert f3.status == "drift" and f3.strong and f3.mean_shift_std == pytest.approx(1.0, abs=0.1)
    assert report.features[5].nan_rate == pytest.approx(10 / 2000)
    assert report.test_alpha == pytest.approx(0.05 * 0.5 / 8)  # half of alpha: combined test
    text = report.model_dump_json()
    assert "NaN" not in text and type(report).model_validate_json(text) == report


def test_feature_without_values_is_left_out_of_the_family() -> None:
    ref, _ = gaussian_reference(3)
    x = np.random.default_rng(2).normal(size=(600, 3))
    x[:, 1] = np.nan
    report = compute_drift(summarise(ref, x), ref)
    assert report.features[1].status == "insufficient"
    assert report.features[1].psi is None and report.features[1].mean is None
    assert report.n_tests == 2 and report.verdict == "no_drift"
    x[:, :] = np.nan  # 600 rows, but no finite value anywhere
    report = compute_drift(summarise(ref, x), ref)
    assert report.verdict == "insufficient" and "no feature has 30 finite values" in report.reason


def test_share_threshold_and_strong_override() -> None:
    ref, _ = gaussian_reference(10)
    x = np.random.default_rng(3).normal(size=(3000, 10))
    x[:, 0] += 0.35  # significant and above the floor, but not strong
    strict = DriftThresholds(min_drifted_share=0.3, combined_share=0.0)  # per-feature rule only
    report = compute_drift(summarise(ref, x), ref, strict)
    assert report.n_drifted == 1 and report.verdict == "no_drift" and report.holding
    x[:, 1] += 1.5  # one strongly drifted feature is enough
    assert compute_drift(summarise(ref, x), ref, strict).verdict == "drift"


def test_prediction_histogram_against_the_models_own_predictions() -> None:
    ref, _ = gaussian_reference(4)
    rng = np.random.default_rng(4)
    ref_probs = rng.dirichlet([4.0, 2.0, 1.0], size=4000)
    ref = with_predictions(ref, ref_probs)
    x = rng.normal(size=(1000, 4))
    same = rng.dirichlet([4.0, 2.0, 1.0], size=1000)
    labels = same.argmax(axis=1)
    labels[:100] = (labels[:100] + 1) % 3  # 10 % wrong
    report = compute_drift(summarise(ref, x, same, labels), ref)
    assert report.prediction is not None
    assert report.prediction.basis == "predictions" and report.prediction.drifted is False
    assert report.n_tests == 5 and report.verdict == "no_drift"
    assert report.prediction.accuracy == pytest.approx(0.9)
    assert report.prediction.confidence_psi is not None
    flipped = rng.dirichlet([1.0, 2.0, 4.0], size=1000)
    report = compute_drift(summarise(ref, x, flipped), ref)
    assert report.prediction is not None and report.prediction.drifted is True
    assert report.verdict == "drift" and "predicted classes drifted" in report.reason
    ignored = compute_drift(summarise(ref, x, flipped), ref, DriftThresholds(use_predictions=False))
    assert ignored.verdict == "no_drift" and ignored.n_tests == 4


def test_prediction_against_labels_is_information_only() -> None:
    ref, _ = gaussian_reference(2)  # no prediction histogram: compared with training labels
    x = np.random.default_rng(5).normal(size=(800, 2))
    probs = np.tile([0.9, 0.05, 0.05], (800, 1))  # always class 0
    report = compute_drift(summarise(ref, x, probs), ref)
    assert report.prediction is not None and report.prediction.basis == "labels"
    assert report.prediction.pvalue is not None and report.prediction.pvalue < 1e-10
    assert report.prediction.drifted is None and report.verdict == "no_drift"


def test_summary_of_other_bins_is_refused() -> None:
    ref, _ = gaussian_reference(3, seed=0)
    other, _ = gaussian_reference(3, seed=1)
    summary = summarise(other, np.zeros((300, 3)))
    with pytest.raises(SummaryError, match="do not match the reference"):
        compute_drift(summary, ref)


def test_thresholds_are_validated_and_per_model() -> None:
    with pytest.raises(ValidationError, match="laxer"):
        DriftThresholds(alpha=0.3, exit_alpha=0.2)
    with pytest.raises(ValidationError):
        DriftThresholds(min_samples=0)
    with pytest.raises(ValidationError, match="psi_strong"):
        DriftThresholds(psi_strong=0.01)
    policy = ThresholdPolicy(
        per_model={"digits-mlp": DriftThresholds(min_samples=50, accuracy_drop_min=0.05)}
    )
    assert policy.for_model("digits-mlp").min_samples == 50
    assert policy.for_model("digits-mlp").accuracy_drop_min == 0.05
    assert policy.for_model("other") == DriftThresholds()
    assert ThresholdPolicy.model_validate_json(policy.model_dump_json()) == policy
