"""Per-feature drift statistics of one (merged) summary against its reference profile.

:func:`feature_stats` lines a :class:`~edgefleet.drift.DriftSummary` up with the plan's
:class:`~edgefleet.drift.ReferenceProfile` and runs the statistics of :mod:`server.drift.stats`
on every feature at once; :func:`feature_drifts` turns them into one :class:`FeatureDrift` a
feature, with the status the input-drift test of :func:`server.drift.report.compute_drift` gave it.

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

import math

import numpy as np

from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.compare import folded_matrices
from server.drift import stats
from server.drift.base import FeatureStatus, ReportModel
from server.drift.thresholds import DriftThresholds

EXACT_KS_MAX_N = 1000  # effective sizes up to which the verdict's KS p-values are exact


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


def feature_stats(
    summary: DriftSummary,
    reference: ReferenceProfile,
    th: DriftThresholds,
    levels: tuple[float, float],
) -> dict[str, np.ndarray]:
    """Every per-feature statistic, vectorised over the features.

    ``levels`` are the per-feature test and exit levels: KS p-values near them are exact up to
    :data:`EXACT_KS_MAX_N` effective samples (:func:`server.drift.stats.ks_pvalue`).
    """
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


def feature_drifts(
    summary: DriftSummary,
    reference: ReferenceProfile,
    st: dict[str, np.ndarray],
    tested: np.ndarray,
    drifted: np.ndarray,
    strong: np.ndarray,
) -> list[FeatureDrift]:
    """One :class:`FeatureDrift` a reference feature, from :func:`feature_stats`' ``st``.

    ``tested``, ``drifted`` and ``strong`` are the input-drift test's per-feature outcomes
    (:func:`server.drift.report.compute_drift`); they set each feature's ``status`` and
    ``strong``.
    """
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
