"""The fleet-level combined drift test: do the features move together?

A shift spread thinly over many features (a sensor gain of +20 % on every pixel, a small offset
on every channel) can leave each feature below its own floor and test. This test adds the
evidence up, with the correlation between features accounted for:

1. Each tested feature ``j`` gives two z-scores, the window's mean *location* and *spread*
   score minus the reference's, over its standard error (:mod:`edgefleet.drift.scores`: the
   first two components of Neyman's smooth test on the reference bins, computed from the
   binned counts alone)::

       z_jc = (h̄_jc − h̄ref_jc) / sqrt(v_jc · (1/n_j + 1/m_j))

2. The statistic is ``S = Σ z_jc²``. With no drift ``z ~ N(0, R)``, ``R`` the correlation of the
   scores on the training data, so ``S ~ Σ λᵢ χ²₁`` (``λ`` the eigenvalues of ``R``). Its tail is
   computed from ``tr R^k``, k = 1..3, which the reference profile stores
   (``ReferenceProfile.score_traces``) — 64 strongly correlated pixels count as the few
   independent directions they are, not as 64 tests. A reference without them (or a window in
   which some features lack values) is treated as if every feature were perfectly correlated
   (``c_k = P^k``): still a valid test, with less power.

3. The effect size is the *joint* bias-corrected effect
   ``(Σ (z_jc² − 1) / ne_j) · c1 / c2``, ``ne_j = n_j m_j / (n_j + m_j)``: each term estimates a
   feature's squared standardized shift without bias (``E[z²] = 1 + ne·δ²``), the sum is the
   χ²-divergence of independent features together, and ``c1 / c2`` (1 for independent
   features, ``1/P`` for ``P`` copies of one) removes the double counting of correlated ones.
   It is on the PSI scale (a 0.25σ mean shift in one feature is about 0.06), and the window
   counts as drifted only when it also reaches ``psi_min``.

``carriers`` lists the features that carry the statistic: those whose own two z-scores are
significant at the unadjusted ``alpha`` level, largest first, with their share of the excess
``Σ (z² − 1)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np
from scipy import stats as sst

from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.scores import MIN_VARIANCE, reference_moments, summary_scores
from server.drift.base import ReportModel, num
from server.drift.stats import quadratic_form_sf

MAX_CARRIERS = 20


class FeatureContribution(ReportModel):
    """One feature's part in the combined statistic."""

    index: int
    name: str
    z_location: float | None
    z_spread: float | None
    pvalue: float
    share: float  # of the statistic's excess over its expectation


class CombinedDrift(ReportModel):
    """The combined statistic over every tested feature of one window."""

    n_features: int
    n_components: int
    statistic: float
    expected: float
    pvalue: float | None
    effect: float | None
    effective_features: float | None
    calibrated: bool
    test_alpha: float
    drifted: bool
    holding: bool
    carriers: list[FeatureContribution]


@dataclass(frozen=True)
class _Prepared:
    """A reference's score layout, padded to ``[features, width, 2]``."""

    scores: np.ndarray  # [F, W, 2]
    mean: np.ndarray  # [F, 2]
    var: np.ndarray  # [F, 2]
    used: np.ndarray  # bool [F, 2]: components with variance


_CACHE: OrderedDict[int, tuple[ReferenceProfile, _Prepared]] = OrderedDict()
_CACHE_LOCK = Lock()


def _prepared(reference: ReferenceProfile) -> _Prepared:
    key = id(reference)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is reference:
            _CACHE.move_to_end(key)
            return hit[1]
    f = reference.n_features
    width = max(len(fr.bin_counts) for fr in reference.features) + 2
    scores = np.zeros((f, width, 2))
    mean = np.zeros((f, 2))
    var = np.zeros((f, 2))
    for j, fr in enumerate(reference.features):
        scores[j, : len(fr.bin_counts) + 2] = summary_scores(fr.bin_counts)
        mean[j], var[j] = reference_moments(fr.bin_counts)
    prep = _Prepared(scores, mean, var, var > MIN_VARIANCE)
    with _CACHE_LOCK:
        _CACHE[key] = (reference, prep)
        while len(_CACHE) > 32:
            _CACHE.popitem(last=False)
    return prep


def combined_test(
    summary: DriftSummary,
    reference: ReferenceProfile,
    tested: np.ndarray,
    *,
    test_alpha: float,
    exit_alpha: float,
    effect_min: float,
    effect_exit: float,
    alpha: float,
) -> CombinedDrift | None:
    """The combined test over the ``tested`` features (``None`` when no component is tested)."""
    prep = _prepared(reference)
    lengths = [len(r) for r in summary.bin_counts]
    counts = np.zeros(prep.scores.shape[:2])
    for j, row in enumerate(summary.bin_counts):
        counts[j, : lengths[j]] = row
    n = counts.sum(axis=1)
    m = np.asarray([fr.count for fr in reference.features], dtype=np.float64)
    use = prep.used & np.asarray(tested, dtype=bool)[:, None] & (n > 0)[:, None]
    p_used = int(use.sum())
    if p_used == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        window_mean = np.einsum("fw,fwc->fc", counts, prep.scores) / n[:, None]
        se2 = prep.var * (1.0 / n + 1.0 / m)[:, None]
        z = np.where(use, (window_mean - prep.mean) / np.sqrt(se2), 0.0)
        ne = np.where(n > 0, n * m / (n + m), np.inf)
    z2 = z * z
    stat = float(z2.sum())
    traces = reference.score_traces
    calibrated = (
        traces is not None
        and abs(traces[0] - prep.used.sum()) < 0.5
        and (p_used == int(prep.used.sum()))
    )
    c1, c2, c3 = traces if calibrated and traces else [p_used, p_used**2, p_used**3]
    pvalue = float(quadratic_form_sf(stat, c1, c2, c3))
    effect = float((np.where(use, z2 - 1.0, 0.0) / ne[:, None]).sum() * c1 / c2)
    significant = np.isfinite(pvalue) and pvalue < test_alpha
    return CombinedDrift(
        n_features=int(use.any(axis=1).sum()),
        n_components=p_used,
        statistic=stat,
        expected=float(c1),
        pvalue=num(pvalue),
        effect=num(effect),
        effective_features=num(c1 * c1 / c2),
        calibrated=calibrated,
        test_alpha=test_alpha,
        drifted=bool(significant and effect >= effect_min),
        holding=bool(np.isfinite(pvalue) and pvalue < exit_alpha and effect >= effect_exit),
        carriers=_carriers(z, z2, use, reference, alpha),
    )


def _carriers(
    z: np.ndarray, z2: np.ndarray, use: np.ndarray, reference: ReferenceProfile, alpha: float
) -> list[FeatureContribution]:
    """Features whose own components are significant at ``alpha``, largest excess first."""
    per = z2.sum(axis=1)
    dof = use.sum(axis=1)
    with np.errstate(invalid="ignore"):
        p = np.where(dof > 0, sst.chi2.sf(per, np.maximum(dof, 1)), 1.0)
    excess = np.where(use, z2 - 1.0, 0.0).sum(axis=1)
    total = float(np.clip(excess, 0.0, None).sum())
    order = [j for j in np.argsort(-excess) if dof[j] > 0 and p[j] < alpha][:MAX_CARRIERS]
    return [
        FeatureContribution(
            index=int(j),
            name=reference.features[j].name,
            z_location=float(z[j, 0]) if use[j, 0] else None,
            z_spread=float(z[j, 1]) if use[j, 1] else None,
            pvalue=float(p[j]),
            share=float(max(excess[j], 0.0) / total) if total > 0 else 0.0,
        )
        for j in order
    ]
