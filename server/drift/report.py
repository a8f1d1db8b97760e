"""The drift verdict of one (merged) summary against its reference profile.

:func:`compute_drift` checks a :class:`~edgefleet.drift.DriftSummary` against the plan's
:class:`~edgefleet.drift.ReferenceProfile`, takes the per-feature statistics of
:mod:`server.drift.features` (which bins each statistic sees is told there), tests every feature
and the predicted classes at their share of ``alpha``, adds the combined test
(:mod:`server.drift.combined`) and applies the rule documented in :mod:`server.drift.thresholds`.

The floor applies to the bias-corrected PSI (``psi_corrected``), the raw PSI is reported beside
it; the label-based verdicts are :mod:`server.drift.labels`, and the report's ``verdicts``
(:mod:`server.drift.verdicts`) is what the controller and rollout guards read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.drift import DriftSummary, ReferenceProfile
from server.drift.base import FeatureStatus, ReportModel, Verdict, num
from server.drift.combined import CombinedDrift, combined_test
from server.drift.features import FeatureDrift, feature_drifts, feature_stats
from server.drift.labels import (
    LabelPriorDrift,
    PerformanceDrift,
    PredictionDrift,
    label_prior_test,
    performance_test,
    prediction_test,
)
from server.drift.thresholds import DriftThresholds
from server.drift.verdicts import DriftVerdicts

__all__ = [
    "DriftReport",
    "FeatureDrift",
    "FeatureStatus",
    "PredictionDrift",
    "ReportModel",
    "Verdict",
    "compute_drift",
]


class DriftReport(ReportModel):
    """The verdicts of one window (or any merged set of summaries) for one model version.

    ``verdict``/``reason`` are the input-drift verdict (``verdicts.input``); ``performance``
    and ``label_prior`` hold the two label-based verdicts; ``verdicts`` has all three.
    ``max_psi`` is the largest raw PSI of a tested feature (a magnitude to rank devices by),
    ``test_alpha`` the level of each per-feature test.
    """

    model: str
    version: int
    n_samples: int
    verdict: Verdict
    reason: str
    n_tests: int
    n_drifted: int
    share_drifted: float
    max_psi: float | None
    holding: bool
    test_alpha: float
    drifted_features: list[str]
    features: list[FeatureDrift]
    combined: CombinedDrift | None
    prediction: PredictionDrift | None
    performance: PerformanceDrift
    label_prior: LabelPriorDrift
    verdicts: DriftVerdicts
    thresholds: DriftThresholds



@dataclass(frozen=True)
class _InputTests:
    """The outcome of the input-drift test family of one window."""

    stats: dict[str, np.ndarray]
    tested: np.ndarray
    drifted: np.ndarray
    strong: np.ndarray
    n_tests: int
    test_alpha: float
    holding: bool
    prediction: PredictionDrift | None
    pred_test: bool
    pred_drift: bool
    combined: CombinedDrift | None


def _input_tests(
    summary: DriftSummary, reference: ReferenceProfile, th: DriftThresholds
) -> _InputTests:
    """Per-feature, predicted-class and combined tests, at their shares of ``alpha``."""
    n = np.asarray(summary.counts, dtype=np.float64)
    m = np.asarray([fr.count for fr in reference.features], dtype=np.float64)
    tested = (n >= th.min_samples) & (m > 0)
    prediction, pred_test = prediction_test(summary, reference, th)
    n_tests = int(tested.sum()) + int(pred_test)
    share = 1.0 - th.combined_share
    test_alpha = th.alpha * share / max(n_tests, 1)
    exit_alpha = th.exit_alpha * share / max(n_tests, 1)
    st = feature_stats(summary, reference, th, (test_alpha, exit_alpha))
    effect, ks_p = st["effect"], st["ks_p"]
    drifted = tested & (ks_p < test_alpha) & (effect >= th.psi_min)
    holding = bool(np.any(tested & (ks_p < exit_alpha) & (effect >= th.psi_exit)))
    pred_drift = False
    if pred_test and prediction is not None and prediction.pvalue is not None:
        pred_effect = prediction.psi or 0.0
        pred_drift = prediction.pvalue < test_alpha and pred_effect >= th.psi_min
        holding |= prediction.pvalue < exit_alpha and pred_effect >= th.psi_exit
        prediction = prediction.model_copy(update={"drifted": pred_drift})
    combined = None
    if th.combined_share > 0 and summary.n >= th.min_samples:
        combined = combined_test(
            summary,
            reference,
            tested,
            test_alpha=th.alpha * th.combined_share,
            exit_alpha=th.exit_alpha * th.combined_share,
            effect_min=th.psi_min,
            effect_exit=th.psi_exit,
            alpha=th.alpha,
        )
        holding |= combined is not None and combined.holding
    return _InputTests(
        st,
        tested,
        drifted,
        drifted & (effect >= th.psi_strong),
        n_tests,
        test_alpha,
        holding,
        prediction,
        pred_test,
        pred_drift,
        combined,
    )


def compute_drift(
    summary: DriftSummary,
    reference: ReferenceProfile,
    thresholds: DriftThresholds | None = None,
    *,
    validation_accuracy: float | None = None,
) -> DriftReport:
    """Drift statistics and the three verdicts of ``summary`` against ``reference``.

    ``validation_accuracy`` is the version's accuracy on validation data (the
    ``thresholds.accuracy_metric`` version metric); without it the performance verdict is
    ``insufficient``. Raises :class:`~edgefleet.errors.SummaryError` when the summary was made
    against other bins.
    """
    th = thresholds or DriftThresholds()
    summary.check_reference(reference)
    t = _input_tests(summary, reference, th)
    st, tested, drifted, strong, prediction = t.stats, t.tested, t.drifted, t.strong, t.prediction
    combined, effect, n_tests, test_alpha = t.combined, st["effect"], t.n_tests, t.test_alpha
    holding, pred_drift, pred_test = t.holding, t.pred_drift, t.pred_test
    n_tested = int(tested.sum())
    n_drifted = int(drifted.sum())
    verdict, reason = _verdict(
        summary.n, n_tested, n_drifted, bool(strong.any()), pred_drift, pred_test, combined, th
    )
    performance = performance_test(summary, validation_accuracy, th)
    label_prior = label_prior_test(summary, reference, th)
    order = np.argsort(-np.nan_to_num(effect, nan=-np.inf))
    tested_psi = st["psi"][tested]
    return DriftReport(
        model=summary.model,
        version=summary.version,
        n_samples=summary.n,
        verdict=verdict,
        reason=reason,
        n_tests=n_tests,
        n_drifted=n_drifted + int(pred_drift),
        share_drifted=n_drifted / n_tested if n_tested else 0.0,
        max_psi=num(tested_psi.max()) if tested_psi.size else None,
        holding=holding if verdict != "insufficient" else False,
        test_alpha=test_alpha,
        drifted_features=[reference.features[j].name for j in order if drifted[j]],
        features=feature_drifts(summary, reference, st, tested, drifted, strong),
        combined=combined,
        prediction=prediction,
        performance=performance,
        label_prior=label_prior,
        verdicts=DriftVerdicts(
            input=verdict, performance=performance.verdict, label_prior=label_prior.verdict
        ),
        thresholds=th,
    )


def _verdict(
    n: int,
    n_tested: int,
    n_drifted: int,
    any_strong: bool,
    pred_drift: bool,
    pred_test: bool,
    combined: CombinedDrift | None,
    th: DriftThresholds,
) -> tuple[Verdict, str]:
    """The window's input verdict and a one-line reason (see :mod:`server.drift.thresholds`)."""
    if n < th.min_samples:
        return "insufficient", f"too few samples: {n} < {th.min_samples}"
    if n_tested == 0 and not pred_test:
        return "insufficient", f"too few samples: no feature has {th.min_samples} finite values"
    share = n_drifted / n_tested if n_tested else 0.0
    extra = ", predicted classes drifted" if pred_drift else ""
    together = combined is not None and combined.drifted
    if together:
        carriers = ", ".join(c.name for c in combined.carriers[:5]) if combined else ""
        extra += f", features shifted together ({carriers or 'spread thinly'})"
    if pred_drift or any_strong or together or (n_drifted and share >= th.min_drifted_share):
        return "drift", f"{n_drifted} of {n_tested} features drifted{extra}"
    if n_drifted:
        return "no_drift", f"{n_drifted} of {n_tested} features drifted (below the share threshold)"
    return "no_drift", f"no feature of {n_tested} drifted"
