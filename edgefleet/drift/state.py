"""The numbers of a drift summary as numpy arrays, and their merge (Chan et al.).

Shared by :class:`~edgefleet.drift.summary.DriftSummary` (merging validated summaries) and
:class:`~edgefleet.drift.accumulator.DriftAccumulator` (which updates one in place). This module
sits below both: it knows the reference layout but not the wire model, which builds a state with
:meth:`DriftSummary.to_state <edgefleet.drift.summary.DriftSummary.to_state>` and reads one back
with :meth:`DriftSummary.from_state <edgefleet.drift.summary.DriftSummary.from_state>`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefleet.drift.reference import ReferenceProfile

SCHEMA_VERSION = 1  # of the wire format, DriftSummary


def layout(reference: ReferenceProfile) -> np.ndarray:
    """Summary row length (``k + 3``) of each reference feature."""
    return np.asarray([len(f.bin_edges) + 3 for f in reference.features], dtype=np.int64)


@dataclass
class SummaryState:
    """The summary's numbers as numpy arrays; bins padded to ``[features, max(lengths)]``.

    ``lo``/``hi`` hold ``+inf``/``-inf`` for features without a finite value (``None`` in the
    summary); ``mean``/``m2`` are 0 there, so an empty state is an exact identity of
    :meth:`merged`.
    """

    lengths: np.ndarray  # int64 [F]: bins per feature row (k + 3)
    n: int
    bins: np.ndarray  # int64 [F, W]
    nan: np.ndarray  # int64 [F]
    mean: np.ndarray  # float64 [F]
    m2: np.ndarray  # float64 [F]
    lo: np.ndarray  # float64 [F]
    hi: np.ndarray  # float64 [F]
    cls: np.ndarray  # int64 [C]
    conf: np.ndarray  # int64 [B]
    lab_total: np.ndarray  # int64 [C]
    lab_correct: np.ndarray  # int64 [C]

    @classmethod
    def zeros(cls, lengths: np.ndarray, n_classes: int, n_conf: int) -> SummaryState:
        f = lengths.size
        z = np.zeros(f)
        zc = np.zeros(n_classes, dtype=np.int64)
        return cls(
            lengths,
            0,
            np.zeros((f, int(lengths.max(initial=3))), dtype=np.int64),
            np.zeros(f, dtype=np.int64),
            z,
            z.copy(),
            np.full(f, np.inf),
            np.full(f, -np.inf),
            zc,
            np.zeros(n_conf, dtype=np.int64),
            zc.copy(),
            zc.copy(),
        )

    def counts(self) -> np.ndarray:
        return self.n - self.nan

    def merged(self, other: SummaryState) -> SummaryState:
        """Chan et al.'s parallel merge of two states with the same layout."""
        na, nb = self.counts().astype(np.float64), other.counts().astype(np.float64)
        mean, m2 = chan_merge(na, self.mean, self.m2, nb, other.mean, other.m2)
        return replace(
            self,
            n=self.n + other.n,
            bins=self.bins + other.bins,
            nan=self.nan + other.nan,
            mean=mean,
            m2=m2,
            lo=np.minimum(self.lo, other.lo),
            hi=np.maximum(self.hi, other.hi),
            cls=self.cls + other.cls,
            conf=self.conf + other.conf,
            lab_total=self.lab_total + other.lab_total,
            lab_correct=self.lab_correct + other.lab_correct,
        )

    def fields(self, model: str, version: int, fingerprint: str) -> dict[str, Any]:
        """The fields of a :class:`~edgefleet.drift.summary.DriftSummary` of these numbers."""

        def rng(a: np.ndarray) -> list[float | None]:
            return [float(v) if np.isfinite(v) else None for v in a]

        return {
            "schema_version": SCHEMA_VERSION,
            "model": model,
            "version": version,
            "reference_fingerprint": fingerprint,
            "n": int(self.n),
            "bin_counts": [
                row[:k].tolist() for row, k in zip(self.bins, self.lengths, strict=True)
            ],
            "nan_counts": self.nan.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "min": rng(self.lo),
            "max": rng(self.hi),
            "class_counts": self.cls.tolist(),
            "confidence_counts": self.conf.tolist(),
            "label_total": self.lab_total.tolist(),
            "label_correct": self.lab_correct.tolist(),
        }


def chan_merge(
    na: np.ndarray,
    ma: np.ndarray,
    m2a: np.ndarray,
    nb: np.ndarray,
    mb: np.ndarray,
    m2b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Merged ``(mean, m2)`` of two groups of ``na`` and ``nb`` values (elementwise, exact zeros).

    ``mean = (na·ma + nb·mb) / n`` and ``m2 = m2a + m2b + (mb - ma)²·na·nb / n``: symmetric in
    the two groups, so the merge is exactly commutative; an empty group is an exact identity.
    """
    n = na + nb
    positive = n > 0
    mean = np.divide(na * ma + nb * mb, n, out=np.zeros_like(n), where=positive)
    np.copyto(mean, mb, where=na == 0)
    np.copyto(mean, ma, where=nb == 0)
    delta = mb - ma
    m2 = m2a + m2b + np.divide(delta * delta * (na * nb), n, out=np.zeros_like(n), where=positive)
    return mean, m2
