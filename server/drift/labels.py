"""What the prediction and label histograms of a summary say: three tests of their own.

``prediction_test``
    The predicted-class histogram against the model's own predictions on reference data
    (chi-square of homogeneity; part of the input-drift family), or against the training labels
    when the reference has no prediction histogram (information only).
``performance_test``
    *Performance drift*: the window's labelled accuracy ``k / n`` (``label_correct`` over
    ``label_total``) against the version's validation accuracy ``a₀`` (a version metric). The
    null hypothesis is "accuracy is at least ``a₀ − accuracy_drop_min``"; its exact one-sided
    binomial p-value is ``P(Binom(n, a₀ − accuracy_drop_min) ≤ k)``. The verdict is ``drift``
    when that is below ``alpha``; the floor is built into the null hypothesis, so for a true
    drop larger than the floor detection only grows with ``n``, and a drop smaller than it is
    never flagged in the long run. Exact at every ``n`` (no normal approximation), so
    ``min_labelled`` (default 30) is a policy rather than a validity bound: with 30 labels a
    0.9 accuracy is known to ±0.055 (one standard error), and only drops of about 0.15 or more
    are found reliably.
``label_prior_test``
    *Label-prior shift*: the histogram of the labels that became known (``label_total``) against
    the training labels (``class_counts``): chi-square of homogeneity (p-value) with the
    bias-corrected χ²-divergence of the class shares (:func:`server.drift.stats.chi2_divergence`)
    as its effect size, which must reach ``prior_min``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats as sst

from edgefleet.drift import DriftSummary, ReferenceProfile
from server.drift import stats
from server.drift.base import ReportModel, Verdict, num
from server.drift.thresholds import DriftThresholds


class PredictionDrift(ReportModel):
    """The predicted-class histogram against the reference's, and label-based accuracy.

    ``basis`` is ``"predictions"`` when the reference has the model's own predictions (then the
    test is part of the verdict, ``drifted`` is set) and ``"labels"`` when it only has training
    labels (information only: a model's predictions differ from labels by its errors).
    """

    basis: Literal["predictions", "labels"]
    n_predicted: int
    chi2: float | None
    dof: int
    pvalue: float | None
    psi: float | None
    drifted: bool | None
    class_shares: list[float]
    reference_class_shares: list[float]
    confidence_shares: list[float]
    confidence_psi: float | None
    n_labelled: int
    accuracy: float | None
    class_accuracy: list[float | None]


class PerformanceDrift(ReportModel):
    """Labelled accuracy of the window against the version's validation accuracy."""

    verdict: Verdict
    reason: str
    n_labelled: int
    accuracy: float | None
    validation_accuracy: float | None
    null_accuracy: float | None  # validation accuracy minus the tolerated drop
    pvalue: float | None
    accuracy_lower_bound: float | None  # one-sided (1 - alpha) Clopper–Pearson bound


class LabelPriorDrift(ReportModel):
    """The known labels' class histogram against the training labels'."""

    verdict: Verdict
    reason: str
    n_labelled: int
    chi2: float | None
    dof: int
    pvalue: float | None
    effect: float | None
    class_shares: list[float]
    reference_class_shares: list[float]


def prediction_test(
    summary: DriftSummary, ref: ReferenceProfile, th: DriftThresholds
) -> tuple[PredictionDrift | None, bool]:
    """The prediction-histogram test, and whether it belongs to the verdict's test family."""
    n_pred = summary.n_predicted
    if n_pred == 0:
        return None, False
    own = ref.prediction_counts is not None
    base = np.asarray(ref.prediction_counts if own else ref.class_counts, dtype=np.float64)
    cls = np.asarray(summary.class_counts, dtype=np.float64)
    chi2, dof, p = stats.chi2_two_sample(cls, base)
    cls_psi = float(stats.chi2_divergence(cls, base))
    in_family = own and th.use_predictions and n_pred >= th.min_samples
    conf = np.asarray(summary.confidence_counts, dtype=np.float64)
    conf_psi = None
    if ref.confidence_counts is not None and sum(ref.confidence_counts) > 0:
        conf_ref = np.asarray(ref.confidence_counts, dtype=float)
        conf_psi = num(float(stats.psi(conf, conf_ref, epsilon=th.psi_epsilon)))
    total = np.asarray(summary.label_total, dtype=np.float64)
    correct = np.asarray(summary.label_correct, dtype=np.float64)
    labelled = int(total.sum())
    pred = PredictionDrift(
        basis="predictions" if own else "labels",
        n_predicted=n_pred,
        chi2=num(chi2),
        dof=dof,
        pvalue=num(p),
        psi=num(cls_psi),
        drifted=None,
        class_shares=(cls / n_pred).tolist(),
        reference_class_shares=(base / max(base.sum(), 1.0)).tolist(),
        confidence_shares=(conf / n_pred).tolist(),
        confidence_psi=conf_psi,
        n_labelled=labelled,
        accuracy=float(correct.sum() / labelled) if labelled else None,
        class_accuracy=[float(c / t) if t else None for c, t in zip(correct, total, strict=True)],
    )
    return pred, in_family


def performance_test(
    summary: DriftSummary, validation_accuracy: float | None, th: DriftThresholds
) -> PerformanceDrift:
    """Performance drift of one window (see the module docstring)."""
    n = int(sum(summary.label_total))
    k = int(sum(summary.label_correct))
    acc = k / n if n else None
    lower = float(sst.beta.ppf(th.alpha, k, n - k + 1)) if n and k else 0.0 if n else None

    def out(verdict: Verdict, reason: str, **kw: float | None) -> PerformanceDrift:
        return PerformanceDrift(
            verdict=verdict,
            reason=reason,
            n_labelled=n,
            accuracy=acc,
            validation_accuracy=validation_accuracy,
            accuracy_lower_bound=lower,
            null_accuracy=kw.get("null_accuracy"),
            pvalue=kw.get("pvalue"),
        )

    if validation_accuracy is None or not 0.0 <= validation_accuracy <= 1.0:
        return out("insufficient", f"version has no {th.accuracy_metric!r} metric in [0, 1]")
    if n < th.min_labelled:
        return out("insufficient", f"too few labelled predictions: {n} < {th.min_labelled}")
    a0 = max(validation_accuracy - th.accuracy_drop_min, 0.0)
    p = float(sst.binom.cdf(k, n, a0)) if a0 > 0 else 1.0
    assert acc is not None
    if p < th.alpha:
        reason = f"accuracy {acc:.3f} on {n} labels is below {validation_accuracy:.3f} - "
        return out(
            "drift", reason + f"{th.accuracy_drop_min:g} (p={p:.2g})", null_accuracy=a0, pvalue=p
        )
    return out(
        "no_drift", f"accuracy {acc:.3f} on {n} labels (p={p:.2g})", null_accuracy=a0, pvalue=p
    )


def label_prior_test(
    summary: DriftSummary, reference: ReferenceProfile, th: DriftThresholds
) -> LabelPriorDrift:
    """Label-prior shift of one window (see the module docstring)."""
    seen = np.asarray(summary.label_total, dtype=np.float64)
    base = np.asarray(reference.class_counts, dtype=np.float64)
    n = int(seen.sum())
    shares = (seen / n).tolist() if n else [0.0] * seen.size
    ref_shares = (base / max(base.sum(), 1.0)).tolist()

    def out(
        verdict: Verdict,
        reason: str,
        chi2: float = np.nan,
        dof: int = 0,
        p: float = np.nan,
        effect: float = np.nan,
    ) -> LabelPriorDrift:
        return LabelPriorDrift(
            verdict=verdict,
            reason=reason,
            n_labelled=n,
            chi2=num(chi2),
            dof=dof,
            pvalue=num(p),
            effect=num(effect),
            class_shares=shares,
            reference_class_shares=ref_shares,
        )

    if base.sum() <= 0:
        return out("insufficient", "the reference has no training labels")
    if n < th.min_labelled:
        return out("insufficient", f"too few labelled predictions: {n} < {th.min_labelled}")
    chi2, dof, p = stats.chi2_two_sample(seen, base)
    effect = float(stats.chi2_divergence(seen, base))
    if np.isfinite(p) and p < th.alpha and effect >= th.prior_min:
        return out(
            "drift", f"label shares moved (effect {effect:.3f}, p={p:.2g})", chi2, dof, p, effect
        )
    return out("no_drift", f"label shares effect {effect:.3f} (p={p:.2g})", chi2, dof, p, effect)
