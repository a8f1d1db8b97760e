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
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.compare import folded_matrices
from server.drift import stats
from server.drift.thresholds import DriftThresholds

Verdict = Literal["insufficient", "no_drift", "drift"]
FeatureStatus = Literal["insufficient", "ok", "drift"]


class ReportModel(BaseModel):
    """Base of the drift reports: immutable, and no field that is not declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def project(cls, source: object, **fields: Any) -> Self:
        """An instance of ``fields``, every other field read from ``source``'s same-named attribute.

        Builds the narrower views of a larger report (a window, a device, a feature, an event)
        without copying its fields one by one; validation is the constructor's, as ever.
        """
        taken = {name: getattr(source, name) for name in cls.model_fields if name not in fields}
        return cls(**taken, **fields)


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


class FeatureDrift(ReportModel):
    """Statistics of one input feature in one window (``None``: not computable)."""

    index: int
    name: str
    n: int
    status: FeatureStatus
    strong: bool
    psi: float | None
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


class DriftReport(ReportModel):
    """The verdict of one window (or any merged set of summaries) for one model version."""

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
    prediction: PredictionDrift | None
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


def compute_drift(
    summary: DriftSummary,
    reference: ReferenceProfile,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Drift statistics and verdict of ``summary`` against ``reference``.

    Raises :class:`~edgefleet.errors.SummaryError` when the summary was made against other bins.
    """
    th = thresholds or DriftThresholds()
    summary.check_reference(reference)
    lay = _layout(summary, reference)
    n = np.asarray(summary.counts, dtype=np.float64)
    m = np.asarray([fr.count for fr in reference.features], dtype=np.float64)
    eps = th.psi_epsilon
    psi = stats.psi(lay["folded"], lay["folded_ref"], lay["folded_valid"], epsilon=eps)
    js = stats.js_distance(lay["folded"], lay["folded_ref"], lay["folded_valid"])
    ks = stats.ks_statistic(lay["sample"], lay["ref"], lay["valid"])
    ks_p = stats.ks_pvalue(ks, n, m)
    ref_std = np.asarray([fr.std for fr in reference.features])
    ref_mean = np.asarray([fr.mean for fr in reference.features])
    w1 = _wasserstein(summary, reference, lay, ref_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        w1_std = np.where(ref_std > 0, w1 / ref_std, np.nan)
        std = np.sqrt(summary.variance())
        shift = np.where(ref_std > 0, (np.asarray(summary.mean) - ref_mean) / ref_std, np.nan)
        oor = (lay["sample"][:, 0] + lay["sample"][np.arange(n.size), lay["lengths"] - 1]) / n
    tested = (n >= th.min_samples) & (m > 0)

    prediction, pred_test = _prediction(summary, reference, th)
    n_tests = int(tested.sum()) + int(pred_test)
    test_alpha = th.alpha / max(n_tests, 1)
    exit_alpha = th.exit_alpha / max(n_tests, 1)
    drifted = tested & (ks_p < test_alpha) & (psi >= th.psi_min)
    strong = drifted & (psi >= th.psi_strong)
    holding = bool(np.any(tested & (ks_p < exit_alpha) & (psi >= th.psi_exit)))
    pred_drift = False
    if pred_test and prediction is not None and prediction.pvalue is not None:
        pred_psi = prediction.psi or 0.0
        pred_drift = prediction.pvalue < test_alpha and pred_psi >= th.psi_min
        holding |= prediction.pvalue < exit_alpha and pred_psi >= th.psi_exit
        prediction = prediction.model_copy(update={"drifted": pred_drift})

    features = []
    for j, fr in enumerate(reference.features):
        status: FeatureStatus = "drift" if drifted[j] else "ok" if tested[j] else "insufficient"
        has = n[j] > 0
        features.append(
            FeatureDrift(
                index=j,
                name=fr.name,
                n=int(n[j]),
                status=status,
                strong=bool(strong[j]),
                psi=_num(psi[j]),
                ks_statistic=_num(ks[j]) if has else None,
                ks_pvalue=_num(ks_p[j]),
                js_distance=_num(js[j]),
                wasserstein=_num(w1[j]) if has else None,
                wasserstein_std=_num(w1_std[j]) if has else None,
                mean=float(summary.mean[j]) if has else None,
                reference_mean=fr.mean,
                std=float(std[j]) if has else None,
                reference_std=fr.std,
                mean_shift_std=_num(shift[j]) if has else None,
                nan_rate=summary.nan_counts[j] / summary.n if summary.n else None,
                reference_nan_rate=1.0 - fr.count / reference.n_samples
                if reference.n_samples
                else 0.0,
                out_of_range_rate=_num(oor[j]) if has else None,
            )
        )
    n_tested = int(tested.sum())
    n_drifted = int(drifted.sum())
    share = n_drifted / n_tested if n_tested else 0.0
    verdict, reason = _verdict(
        summary.n, n_tested, n_drifted, bool(strong.any()), pred_drift, pred_test, th
    )
    order = np.argsort(-np.nan_to_num(psi, nan=-1.0))
    tested_psi = psi[tested]
    return DriftReport(
        model=summary.model,
        version=summary.version,
        n_samples=summary.n,
        verdict=verdict,
        reason=reason,
        n_tests=n_tests,
        n_drifted=n_drifted + int(pred_drift),
        share_drifted=share,
        max_psi=_num(tested_psi.max()) if tested_psi.size else None,
        holding=holding if verdict != "insufficient" else False,
        test_alpha=test_alpha,
        drifted_features=[reference.features[j].name for j in order if drifted[j]],
        features=features,
        prediction=prediction,
        thresholds=th,
    )


def _verdict(
    n: int,
    n_tested: int,
    n_drifted: int,
    any_strong: bool,
    pred_drift: bool,
    pred_test: bool,
    th: DriftThresholds,
) -> tuple[Verdict, str]:
    """The window's verdict and a one-line reason (see :mod:`server.drift.thresholds`)."""
    if n < th.min_samples:
        return "insufficient", f"too few samples: {n} < {th.min_samples}"
    if n_tested == 0 and not pred_test:
        return "insufficient", f"too few samples: no feature has {th.min_samples} finite values"
    share = n_drifted / n_tested if n_tested else 0.0
    pred = ", predicted classes drifted" if pred_drift else ""
    if pred_drift or any_strong or (n_drifted and share >= th.min_drifted_share):
        return "drift", f"{n_drifted} of {n_tested} features drifted{pred}"
    if n_drifted:
        return "no_drift", f"{n_drifted} of {n_tested} features drifted (below the share threshold)"
    return "no_drift", f"no feature of {n_tested} drifted"


def _prediction(
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
    cls_psi = float(stats.psi(cls, base, epsilon=th.psi_epsilon))
    in_family = own and th.use_predictions and n_pred >= th.min_samples
    conf = np.asarray(summary.confidence_counts, dtype=np.float64)
    conf_psi = None
    if ref.confidence_counts is not None and sum(ref.confidence_counts) > 0:
        conf_psi = _num(
            float(
                stats.psi(
                    conf, np.asarray(ref.confidence_counts, dtype=float), epsilon=th.psi_epsilon
                )
            )
        )
    total = np.asarray(summary.label_total, dtype=np.float64)
    correct = np.asarray(summary.label_correct, dtype=np.float64)
    labelled = int(total.sum())
    pred = PredictionDrift(
        basis="predictions" if own else "labels",
        n_predicted=n_pred,
        chi2=_num(chi2),
        dof=dof,
        pvalue=_num(p),
        psi=_num(cls_psi),
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
