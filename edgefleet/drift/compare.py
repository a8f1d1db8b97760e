"""Numpy-only comparisons of a summary with its reference (device, aggregation and server).

The server's full drift tests (KS p-values, chi-square: scipy) live in ``server.drift``; what
needs no scipy lives here so that every side computes PSI the same way:

``proportions(counts, valid)``
    Counts along the last axis as proportions (``nan`` rows where the total is 0); ``valid``
    marks real bins of zero-padded rows.
``psi(p, q, valid, epsilon=1e-4)``
    Population stability index ``Σ (p'_i − q'_i) · ln(p'_i / q'_i)`` on proportions smoothed as
    ``p' = (p + ε) / (1 + k·ε)`` (``k`` real bins, the same ``ε`` on both sides), so empty bins
    contribute a finite amount; without empty bins the smoothing moves PSI by O(ε).
``feature_psi(summary, reference)``
    PSI of every feature of a summary against the reference's own ``k + 1`` bins (under- and
    overflow folded into the open-ended end bins); ``nan`` for features without finite values.
"""

from __future__ import annotations

import numpy as np

from edgefleet.drift.reference import ReferenceProfile
from edgefleet.drift.summary import DriftSummary, fold_counts

DEFAULT_EPSILON = 1e-4


def proportions(counts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Counts over the last axis as proportions (``nan`` rows where the total is 0)."""
    c = np.asarray(counts, dtype=np.float64)
    if valid is not None:
        c = np.where(valid, c, 0.0)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(c / total)


def psi(
    p: np.ndarray,
    q: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> np.ndarray:
    """Population stability index of ``p`` against ``q`` along the last axis (smoothed)."""
    mask = np.ones(np.shape(p), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    k = mask.sum(axis=-1, keepdims=True)
    ps = (proportions(p, mask) + epsilon) / (1.0 + k * epsilon)
    qs = (proportions(q, mask) + epsilon) / (1.0 + k * epsilon)
    terms = np.where(mask, (ps - qs) * np.log(ps / qs), 0.0)
    return np.asarray(terms.sum(axis=-1))


def folded_matrices(
    summary: DriftSummary, reference: ReferenceProfile
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample, reference, valid)`` counts in the reference bins, zero-padded ``[F, max k+1]``.

    Raises :class:`~edgefleet.errors.SummaryError` unless ``summary`` fits ``reference``.
    """
    summary.check_reference(reference)
    width = max(len(f.bin_counts) for f in reference.features)
    sample = np.zeros((reference.n_features, width))
    ref = np.zeros_like(sample)
    valid = np.zeros(sample.shape, dtype=bool)
    for j, (row, fr) in enumerate(zip(summary.bin_counts, reference.features, strict=True)):
        k = len(fr.bin_counts)
        sample[j, :k] = fold_counts(row)
        ref[j, :k] = fr.bin_counts
        valid[j, :k] = True
    return sample, ref, valid


def feature_psi(
    summary: DriftSummary, reference: ReferenceProfile, *, epsilon: float = DEFAULT_EPSILON
) -> np.ndarray:
    """PSI per feature of ``summary`` against ``reference`` (``nan`` where nothing was seen)."""
    sample, ref, valid = folded_matrices(summary, reference)
    return psi(sample, ref, valid, epsilon=epsilon)
