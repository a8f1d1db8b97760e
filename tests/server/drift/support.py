"""Helpers shared by the drift tests: references and summaries of synthetic data."""

from __future__ import annotations

import numpy as np

from edgefleet.drift import DriftAccumulator, DriftSummary, ReferenceProfile, build_reference

MODEL, VERSION = "gauss", 1


def gaussian_reference(
    n_features: int, *, m: int = 5000, seed: int = 0, n_bins: int = 10
) -> tuple[ReferenceProfile, np.ndarray]:
    """A reference of ``m`` standard-normal rows (and the rows themselves)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, n_features))
    y = rng.integers(0, 3, size=m)
    ref = build_reference(x, y, [f"f{j}" for j in range(n_features)], 3, n_bins=n_bins)
    return ref, x


def summarise(
    ref: ReferenceProfile,
    x: np.ndarray,
    probs: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    model: str = MODEL,
    version: int = VERSION,
) -> DriftSummary:
    acc = DriftAccumulator(ref, model=model, version=version)
    acc.update(x, probs, labels)
    return acc.to_summary()
