"""The drift verdict of one (merged) summary against its reference profile.

:func:`compute_drift` lines a :class:`~edgefleet.drift.DriftSummary` up with the plan's
:class:`~edgefleet.drift.ReferenceProfile`, runs the statistics of :mod:`server.drift.stats` on
every feature at once and applies the rule documented in :mod:`server.drift.thresholds`.

Which bins each statistic sees: PSI and Jensen–Shannon use the reference's own ``k + 1`` bins
(the summary's under-/overflow folded into the open-ended end bins, see
:func:`edgefleet.drift.fold_counts`), so they equal the textbook computation on the reference
bins; KS and Wasserstein use all ``k + 3`` summary bins, which adds two exact CDF points (below
the training minimum and at the training maximum, where the reference CDF is 0 and 1), and the
out-of-range share is reported separately. Wasserstein uses the reference bins with exponential
end bins (:func:`server.drift.stats.wasserstein_tails`; uniform bins bounded by the observed
``min``/``max`` for features with fewer than two edges), and never reports less than the exact
lower bound ``|mean − reference mean|``.

The floor applies to the bias-corrected PSI (``psi_corrected``), the raw PSI is reported beside
it; the combined test is :mod:`server.drift.combined`, the label-based verdicts
:mod:`server.drift.labels`, and the report's ``verdicts`` (:mod:`server.drift.verdicts`) is what
the controller and rollout guards read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.compare import folded_matrices
from server.drift import stats
from server.drift.base import FeatureStatus, ReportModel, Verdict, num
from server.drift.combined import CombinedDrift, combined_test
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

EXACT_KS_MAX_N = 1000  # effective sizes up to which the verdict's KS p-values are exact

__all__ = [
    "DriftReport",
    "FeatureDrift",
    "FeatureStatus",
    "PredictionDrift",
    "ReportModel",
    "Verdict",
    "compute_drift",
]


class FeatureDrift(ReportModel):
    """Statistics of one input feature in one window (``None``: not computable)."""

    index: int
    name: str
    n: int
    status: FeatureStatus
    strong: bool
    psi: float | None  # raw (smoothed) PSI, biased upwards by about (bins - 1)(1/n + 1/m)
    psi_corrected: float | None  # bias-corrected PSI: the effect size the floor applies to
    ks_statistic: float | None
    ks_pvalue: float | None
    js_distance: float | None
    wasserstein: float | None
    wasserstein_std: float | None  # in reference standard deviations
    mean: float | None
    reference_mean: float
    std: float | None
    reference_std: float
    mean_shift_std: float | None  # (mean - reference_mean) / reference_std
    nan_rate: float | None
    reference_nan_rate: float
    out_of_range_rate: float | None


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


def _layout(summary: DriftSummary, ref: ReferenceProfile) -> dict[str, np.ndarray]:
    """Padded ``[features, bins]`` matrices of both sides, unfolded and folded."""
    f = ref.n_features
    lengths = np.asarray([len(r) for r in summary.bin_counts])
    width = int(lengths.max())
    cols = np.arange(width)
    sample = np.zeros((f, width))
    refc = np.zeros((f, width))
    edges = np.zeros((f, width + 1))
    inner = np.zeros((f, width - 3))
    ranges = np.zeros((f, 2))
    for j, (row, fr) in enumerate(zip(summary.bin_counts, ref.features, strict=True)):
        k = len(row)
        sample[j, :k] = row
        refc[j, 1 : k - 1] = fr.bin_counts
        s_lo, s_hi = summary.min[j], summary.max[j]
        lo = fr.min if s_lo is None else min(fr.min, s_lo)
        hi = fr.max if s_hi is None else max(fr.max, s_hi)
        edges[j, : k + 1] = [lo, fr.min, *fr.bin_edges, fr.max, hi]
        edges[j, k + 1 :] = hi
        inner[j, : k - 3] = fr.bin_edges
        inner[j, k - 3 :] = fr.bin_edges[-1] if fr.bin_edges else 0.0
        ranges[j] = [lo, hi]
    valid = cols < lengths[:, None]
    folded, folded_ref, folded_valid = folded_matrices(summary, ref)
    return {
        "sample": sample,
        "ref": refc,
        "edges": edges,
        "valid": valid,
        "inner": inner,
        "ranges": ranges,
        "folded": folded,
        "folded_ref": folded_ref,
        "folded_valid": folded_valid,
        "lengths": lengths,
    }


def _wasserstein(
    summary: DriftSummary,
    ref: ReferenceProfile,
    lay: dict[str, np.ndarray],
    ref_mean: np.ndarray,
) -> np.ndarray:
    """W1 per feature: exponential end bins where a feature has >= 2 edges, else uniform bins;
    never below ``|mean − reference mean|``, the exact lower bound."""
    q_range = np.asarray([[fr.min, fr.max] for fr in ref.features])
    tails = stats.wasserstein_tails(
        lay["folded"], lay["folded_ref"], lay["inner"], lay["ranges"], q_range, lay["folded_valid"]
    )
    uniform = stats.wasserstein(lay["sample"], lay["ref"], lay["edges"], lay["valid"])
    estimate = np.where(np.isfinite(tails), tails, uniform)
    return np.asarray(np.maximum(estimate, np.abs(np.asarray(summary.mean) - ref_mean)))


def _feature_stats(
    summary: DriftSummary,
    reference: ReferenceProfile,
    th: DriftThresholds,
    levels: tuple[float, float],
) -> dict[str, np.ndarray]:
    """Every per-feature statistic, vectorised over the features."""
    lay = _layout(summary, reference)
    n = np.asarray(summary.counts, dtype=np.float64)
    m = np.asarray([fr.count for fr in reference.features], dtype=np.float64)
    ks = stats.ks_statistic(lay["sample"], lay["ref"], lay["valid"])
    ref_std = np.asarray([fr.std for fr in reference.features])
    ref_mean = np.asarray([fr.mean for fr in reference.features])
    w1 = _wasserstein(summary, reference, lay, ref_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        w1_std = np.where(ref_std > 0, w1 / ref_std, np.nan)
        shift = np.where(ref_std > 0, (np.asarray(summary.mean) - ref_mean) / ref_std, np.nan)
        oor = (lay["sample"][:, 0] + lay["sample"][np.arange(n.size), lay["lengths"] - 1]) / n
    folded, folded_ref, folded_valid = lay["folded"], lay["folded_ref"], lay["folded_valid"]
    return {
        "n": n,
        "m": m,
        "psi": stats.psi(folded, folded_ref, folded_valid, epsilon=th.psi_epsilon),
        "effect": stats.chi2_divergence(folded, folded_ref, folded_valid),
        "js": stats.js_distance(folded, folded_ref, folded_valid),
        "ks": ks,
        "ks_p": stats.ks_pvalue(ks, n, m, near=levels, exact_max_n=EXACT_KS_MAX_N),
        "w1": w1,
        "w1_std": w1_std,
        "std": np.sqrt(summary.variance()),
        "shift": shift,
        "oor": oor,
    }


def _column(a: np.ndarray, has: np.ndarray) -> list[float | None]:
    """``a`` as floats, ``None`` where not finite or where the feature has no values."""
    return [
        float(v) if h and math.isfinite(v) else None
        for v, h in zip(np.asarray(a, dtype=np.float64).tolist(), has.tolist(), strict=True)
    ]


def _features(
    summary: DriftSummary,
    reference: ReferenceProfile,
    st: dict[str, np.ndarray],
    tested: np.ndarray,
    drifted: np.ndarray,
    strong: np.ndarray,
) -> list[FeatureDrift]:
    n = st["n"]
    has = n > 0
    every = np.ones_like(has)
    col = {key: _column(st[key], has) for key in ("ks", "w1", "w1_std", "std", "shift", "oor")}
    col |= {key: _column(st[key], every) for key in ("psi", "effect", "ks_p", "js")}
    mean = _column(np.asarray(summary.mean), has)
    out = []
    for j, fr in enumerate(reference.features):
        status: FeatureStatus = "drift" if drifted[j] else "ok" if tested[j] else "insufficient"
        out.append(
            FeatureDrift(
                index=j,
                name=fr.name,
                n=int(n[j]),
                status=status,
                strong=bool(strong[j]),
                psi=col["psi"][j],
                psi_corrected=col["effect"][j],
                ks_statistic=col["ks"][j],
                ks_pvalue=col["ks_p"][j],
                js_distance=col["js"][j],
                wasserstein=col["w1"][j],
                wasserstein_std=col["w1_std"][j],
                mean=mean[j],
                reference_mean=fr.mean,
                std=col["std"][j],
                reference_std=fr.std,
                mean_shift_std=col["shift"][j],
                nan_rate=summary.nan_counts[j] / summary.n if summary.n else None,
                reference_nan_rate=1.0 - fr.count / reference.n_samples
                if reference.n_samples
                else 0.0,
                out_of_range_rate=col["oor"][j],
            )
        )
    return out


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
    st = _feature_stats(summary, reference, th, (test_alpha, exit_alpha))
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
        features=_features(summary, reference, st, tested, drifted, strong),
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
