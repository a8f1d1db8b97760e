"""How far a window of inputs moved from a baseline: an effect size that grows with the shift.

PSI on decile bins is the wrong yardstick for *how much* a shift matters: a feature that is
nearly constant on the training data (the border pixels of a digit) has almost all its mass in
one bin, so the smallest offset empties that bin and PSI jumps to ~16 whether the offset is 1 or
8 grey levels; and raw PSI is inflated by about ``(bins − 1)·(1/n + 1/m)`` in small windows.
:func:`moment_shift` measures instead the root-mean-square, over the features, of the shift of
each feature's mean and standard deviation in units of a common scale::

    d_j² = [(μa − μb)² − (va/na + vb/nb)] + [(σa − σb)² − k_j·(va/na + vb/nb)]
    effect = sqrt(max(0, mean_j d_j² / s_j²))

* it grows linearly with an offset or a gain (a +1 shift is an eighth of a +8 shift), and a
  spread change (added noise) moves ``σ``;
* **robust to near-constant features**: ``s_j`` is the feature's reference standard deviation
  floored at ``scale_floor`` times the median of the features' reference deviations, so a
  feature with no spread on the training data cannot turn a small offset into a huge effect;
* **no sample-size bias**: the subtracted terms are the expected squared differences of two
  samples of the same distribution (the mean's variance ``v/n``, the standard deviation's
  ``≈ k·v/n`` with ``k = (κ − 1)/4`` from the feature's kurtosis on the reference,
  :func:`spread_factors`), so an unchanged window scores about 0 at any window size — the
  same idea as the server's bias-corrected PSI floor (``server.drift.stats.chi2_divergence``).
  The sum over features is clipped at 0 only at the end, so noise does not accumulate.

It needs only counts, means and variances, which every :class:`DriftSummary` and
:class:`FeatureReference` carries. Numpy only (devices and the aggregation import it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.drift.reference import ReferenceProfile
from edgefleet.drift.summary import DriftSummary

DEFAULT_SCALE_FLOOR = 0.5


@dataclass(frozen=True)
class Moments:
    """Per feature: finite values ``n``, ``mean`` and population ``var`` (``[F]`` arrays)."""

    n: np.ndarray
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def of_summary(cls, summary: DriftSummary) -> Moments:
        return cls(np.asarray(summary.counts, dtype=np.float64),
                   np.asarray(summary.mean, dtype=np.float64), summary.variance())

    @classmethod
    def of_reference(cls, reference: ReferenceProfile) -> Moments:
        f = reference.features
        return cls(np.asarray([x.count for x in f], dtype=np.float64),
                   np.asarray([x.mean for x in f], dtype=np.float64),
                   np.asarray([x.variance for x in f], dtype=np.float64))


def feature_scales(reference: ReferenceProfile, scale_floor: float = DEFAULT_SCALE_FLOOR
                   ) -> np.ndarray:
    """``s_j = max(σ_j, scale_floor · median σ)`` of the reference (``[F]``, > 0)."""
    sd = np.sqrt(np.asarray([f.variance for f in reference.features], dtype=np.float64))
    typical = float(np.median(sd)) if sd.size else 1.0
    floor = scale_floor * typical if typical > 0 else 1.0
    return np.asarray(np.maximum(sd, floor if floor > 0 else 1.0))


def spread_factors(reference: ReferenceProfile) -> np.ndarray:
    """Per feature ``(κ − 1) / 4``, ``κ`` the kurtosis of the reference's binned values.

    A sample standard deviation's variance is about ``σ²·(κ − 1) / (4n)``: ``σ²/(2n)`` for a
    normal feature, far more for a pixel that is 0 but for rare strokes. ``κ`` is read from the
    reference's bins (each bin's share at its mid-point; the end bins between the training
    range and the first or last edge), 3 where a feature has no spread.
    """
    out = np.full(reference.n_features, 0.5)
    for j, f in enumerate(reference.features):
        edges = np.concatenate([[f.min], f.bin_edges, [f.max]])
        mid = (edges[:-1] + edges[1:]) / 2.0
        q = np.asarray(f.bin_counts, dtype=np.float64)
        if q.sum() <= 0:
            continue
        q /= q.sum()
        mu = q @ mid
        var = q @ (mid - mu) ** 2
        if var > 1e-12:
            out[j] = max(0.5, (q @ (mid - mu) ** 4 / var**2 - 1.0) / 4.0) if var > 0 else 0.5
    return out


def squared_shift(a: Moments, b: Moments, scales: np.ndarray,
                  spread: np.ndarray | None = None) -> float:
    """The bias-corrected ``mean_j d_j² / s_j²`` (signed: noise can make it negative).

    ``spread`` holds :func:`spread_factors` (default 0.5 each: normal features). Features
    without values on either side are left out; ``0.0`` when none is left.
    """
    ok = (a.n > 1) & (b.n > 1)
    if not ok.any():
        return 0.0
    na, nb = a.n[ok], b.n[ok]
    va, vb = a.var[ok] * na / (na - 1), b.var[ok] * nb / (nb - 1)  # unbiased variances
    k = 0.5 if spread is None else spread[ok]
    loc = (a.mean[ok] - b.mean[ok]) ** 2 - (va / na + vb / nb)
    sd = (np.sqrt(va) - np.sqrt(vb)) ** 2 - k * (va / na + vb / nb)
    return float(((loc + sd) / scales[ok] ** 2).mean())


def moment_shift(a: Moments, b: Moments, scales: np.ndarray,
                 spread: np.ndarray | None = None) -> float:
    """The bias-corrected RMS standardized shift of ``a`` from ``b`` (see the module notes):
    ``sqrt(max(0, squared_shift))``."""
    return float(np.sqrt(max(0.0, squared_shift(a, b, scales, spread))))


def summary_shift(summary: DriftSummary, baseline: DriftSummary | ReferenceProfile,
                  reference: ReferenceProfile, *, scale_floor: float = DEFAULT_SCALE_FLOOR
                  ) -> float:
    """:func:`moment_shift` of ``summary`` from a baseline summary or a reference profile,
    on the scales of ``reference``."""
    base = (Moments.of_reference(baseline) if isinstance(baseline, ReferenceProfile)
            else Moments.of_summary(baseline))
    return moment_shift(Moments.of_summary(summary), base,
                        feature_scales(reference, scale_floor), spread_factors(reference))
