"""Smooth scores of binned features, and the correlation traces that calibrate their sum.

The fleet-level drift test (``server.drift.combined``) asks whether the fleet's features moved
*together*, even when none moved enough alone. It uses the first two components of Neyman's
smooth goodness-of-fit test on each feature's bins: a row that falls in reference bin ``b`` (of
reference share ``q_b``) scores

    h₁(u_b) = √3·(2u_b − 1)               (location: larger values score higher)
    h₂(u_b) = √5·(6u_b² − 6u_b + 1)       (spread: both tails score higher)

at ``u_b``, the mid-point of the bin on the reference's CDF scale (``u = 0`` below the training
minimum, ``u = 1`` above its maximum). A window's mean score minus the reference's, divided by
its standard error, is a z-score per feature and component; the fleet statistic is the sum of
their squares. The scores are bounded (``|h₁| ≤ √3``, ``|h₂| ≤ √5``), so the z-scores are close
to normal already at a few dozen rows whatever the bins look like (skewed or sparse bins, which
make Pearson's chi-square unreliable at small n, only change the weights).

Under no drift the z-scores are jointly normal with the correlation ``R`` of the scores on the
training data (neighbouring image pixels are strongly correlated), so the sum of squares is
distributed as ``Σ λᵢ χ²₁`` over the eigenvalues of ``R``. Its tail is fitted from the first three
cumulants, which need only ``c_k = tr(R^k)``, ``k = 1, 2, 3``: :func:`correlation_traces`
computes them once from the training data, and the reference profile stores the three numbers
(never a matrix). Numpy only: the device and the aggregation import this module too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_COMPONENTS = 2
MIN_VARIANCE = 1e-9  # a component whose reference variance is below this is left out
MAX_TRACE_ROWS = 2048  # rows of the Gram matrix when there are more components than that
_SQRT3, _SQRT5 = np.sqrt(3.0), np.sqrt(5.0)


def _h(u: np.ndarray) -> np.ndarray:
    """``[..., 2]`` location and spread scores at CDF positions ``u``."""
    return np.stack([_SQRT3 * (2.0 * u - 1.0), _SQRT5 * (6.0 * u * u - 6.0 * u + 1.0)], axis=-1)


def reference_positions(reference_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Mid-bin CDF positions of the ``k + 1`` reference bins (``[k + 1]``, in (0, 1))."""
    c = np.asarray(reference_counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return np.full(c.size, 0.5)
    q = c / total
    return np.cumsum(q) - q / 2.0


def summary_scores(reference_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Scores ``[k + 3, 2]`` of a summary row ``[underflow, bin_0 … bin_k, overflow]``."""
    u = np.concatenate([[0.0], reference_positions(reference_counts), [1.0]])
    return _h(u)


def reference_moments(
    reference_counts: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance ``([2], [2])`` of the two scores over the reference's own bins."""
    c = np.asarray(reference_counts, dtype=np.float64)
    q = c / max(c.sum(), 1.0)
    h = _h(reference_positions(c))
    mean = q @ h
    var = q @ (h * h) - mean * mean
    return mean, np.maximum(var, 0.0)


def standardized_scores(
    bin_index: np.ndarray, reference_counts: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Per row, the feature's two scores centred and scaled by the reference (``[rows, 2]``).

    ``bin_index`` holds each row's reference bin (``0 … k``), or ``-1`` where the value is not
    finite (scored 0, the mean). Components without variance are 0.
    """
    mean, var = reference_moments(reference_counts)
    h = _h(reference_positions(reference_counts))
    idx = np.asarray(bin_index)
    sd = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd > np.sqrt(MIN_VARIANCE), (h[np.maximum(idx, 0)] - mean) / sd, 0.0)
    return np.asarray(np.where((idx >= 0)[:, None], z, 0.0))


def correlation_traces(z: np.ndarray, *, seed: int = 0) -> list[float]:
    """``[tr R, tr R², tr R³]`` of the correlation ``R = zᵀz / rows`` of standardized scores.

    ``z`` is ``[rows, components]`` (columns of zero variance are dropped first). With more
    components than rows (or than :data:`MAX_TRACE_ROWS`) the traces come from the Gram matrix
    ``z zᵀ / rows`` of at most :data:`MAX_TRACE_ROWS` rows, drawn with ``seed``: it has the same
    non-zero eigenvalues, and a subsample can only overstate ``tr R²`` and ``tr R³`` (the null
    distribution gets wider, the test more conservative).
    """
    a = np.asarray(z, dtype=np.float64)
    power = (a * a).mean(axis=0) if a.shape[0] else np.zeros(a.shape[1])
    a = a[:, power > 0] / np.sqrt(power[power > 0])  # unit diagonal, also with missing values
    rows, cols = a.shape
    if rows == 0 or cols == 0:
        return [0.0, 0.0, 0.0]
    if cols > min(rows, MAX_TRACE_ROWS):
        if rows > MAX_TRACE_ROWS:
            pick = np.random.default_rng(seed).choice(rows, MAX_TRACE_ROWS, replace=False)
            a = a[np.sort(pick)]
            rows = MAX_TRACE_ROWS
        r = (a @ a.T) / rows
    else:
        r = (a.T @ a) / rows
    r2 = r @ r
    return [float(np.trace(r)), float(np.trace(r2)), float((r2 * r).sum())]


def score_matrix(
    bin_indices: Sequence[np.ndarray], reference_counts: Sequence[Sequence[int]]
) -> np.ndarray:
    """Standardized scores of every feature side by side: ``[rows, 2·features]``."""
    cols = [
        standardized_scores(idx, counts)
        for idx, counts in zip(bin_indices, reference_counts, strict=True)
    ]
    if not cols:
        return np.zeros((0, 0))
    return np.concatenate(cols, axis=1)
