"""Reference statistics of the training data, stored in the plan manifest.

Drift is measured against these: each feature's quantile bin edges (and the training data's counts
in those bins), its moments and range, and the training label histogram. Optionally, the model's
own predicted-class and confidence histograms on reference data (:func:`with_predictions`), which
give the server a like-for-like baseline for the prediction tests.

A profile's :meth:`ReferenceProfile.fingerprint` hashes everything a device's summary layout
depends on (feature names, bin edges, ranges, confidence edges, number of classes): a summary made
against other bins carries another fingerprint and is refused at merge time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.drift.scores import correlation_traces, score_matrix

DEFAULT_N_BINS = 10
DEFAULT_CONFIDENCE_EDGES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
FINGERPRINT_VERSION = 1


class FeatureReference(BaseModel):
    """Reference statistics of one input feature over the training data.

    ``bin_edges`` are the *interior* edges (strictly increasing, from the training quantiles; fewer
    than ``n_bins - 1`` when the feature takes few distinct values). They define
    ``len(bin_edges) + 1`` bins ``(-inf, e0), [e0, e1), ..., [e_last, +inf)``; ``bin_counts``
    counts the training data in them. ``count``, ``mean``, ``variance`` (population), ``min`` and
    ``max`` describe the finite training values; the training data has no values outside
    ``[min, max]`` by construction, which device summaries count as under-/overflow.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bin_edges: list[float]
    bin_counts: list[int]
    count: int = Field(ge=0)
    mean: float
    variance: float = Field(ge=0)
    min: float
    max: float

    @field_validator("bin_edges")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        arr = np.asarray(v, dtype=float)
        if not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
            raise ValueError("bin_edges must be finite and strictly increasing")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FeatureReference:
        if len(self.bin_counts) != len(self.bin_edges) + 1:
            raise ValueError(
                f"feature {self.name!r}: {len(self.bin_counts)} bin counts for "
                f"{len(self.bin_edges)} interior edges (expected {len(self.bin_edges) + 1})"
            )
        if any(c < 0 for c in self.bin_counts) or sum(self.bin_counts) != self.count:
            raise ValueError(f"feature {self.name!r}: bin counts must be >= 0 and sum to count")
        if not (np.isfinite(self.min) and np.isfinite(self.max) and self.min <= self.max):
            raise ValueError(f"feature {self.name!r}: min/max must be finite with min <= max")
        return self

    @property
    def n_bins(self) -> int:
        """Number of reference bins (interior edges + 1)."""
        return len(self.bin_edges) + 1

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))


class ReferenceProfile(BaseModel):
    """What the training data looked like, for drift monitoring.

    Attributes
    ----------
    n_samples
        Rows of the reference data (a feature's ``count`` is smaller when it had NaNs).
    features
        One :class:`FeatureReference` per flattened input feature, in input order.
    class_counts
        Training labels per class, in ``class_labels`` order.
    confidence_bin_edges
        Interior edges of the prediction-confidence histogram (max class probability).
    prediction_counts, confidence_counts
        Optional: the model's predicted classes and confidences on reference data
        (see :func:`with_predictions`). When present, the server tests the fleet's prediction
        histogram against them; otherwise against ``class_counts``, for information only.
    score_traces
        Optional: ``[tr R, tr R², tr R³]`` of the correlation ``R`` of the features' smooth
        scores on the training data (:mod:`edgefleet.drift.scores`), which calibrates the
        fleet-level combined drift test for correlated features. Without it the server
        assumes the worst case (every feature perfectly correlated): valid, less powerful.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_samples: int = Field(ge=0)
    features: list[FeatureReference]
    class_counts: list[int] = Field(description="training labels per class, in class_labels order")
    confidence_bin_edges: list[float] = Field(
        default_factory=lambda: list(DEFAULT_CONFIDENCE_EDGES)
    )
    prediction_counts: list[int] | None = None
    confidence_counts: list[int] | None = None
    score_traces: list[float] | None = Field(default=None, min_length=3, max_length=3)

    @field_validator("confidence_bin_edges")
    @classmethod
    def _conf_edges(cls, v: list[float]) -> list[float]:
        arr = np.asarray(v, dtype=float)
        if np.any(~np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
            raise ValueError("confidence_bin_edges must be finite and strictly increasing")
        return v

    @field_validator("score_traces")
    @classmethod
    def _traces(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(np.isfinite(t) and t >= 0 for t in v):
            raise ValueError("score_traces must be three finite values >= 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ReferenceProfile:
        if any(f.count > self.n_samples for f in self.features):
            raise ValueError("a feature counts more values than the reference has samples")
        if self.prediction_counts is not None and len(self.prediction_counts) != self.n_classes:
            raise ValueError("prediction_counts must have one entry per class")
        if self.confidence_counts is not None and (
            len(self.confidence_counts) != len(self.confidence_bin_edges) + 1
        ):
            raise ValueError("confidence_counts must have len(confidence_bin_edges) + 1 entries")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of everything a summary's layout depends on (not of the counts)."""
        doc = {
            "v": FINGERPRINT_VERSION,
            "features": [[f.name, f.bin_edges, f.min, f.max] for f in self.features],
            "confidence_bin_edges": self.confidence_bin_edges,
            "n_classes": self.n_classes,
        }
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def quantile_edges(column: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> np.ndarray:
    """Interior bin edges at the ``1/n_bins … (n_bins-1)/n_bins`` quantiles, deduplicated.

    For a discrete feature, duplicated quantiles collapse, and each remaining edge is moved to the
    midpoint between the distinct values around it, so that each value falls wholly in one bin.
    """
    col = np.asarray(column, dtype=np.float64)
    col = col[np.isfinite(col)]
    if col.size == 0:
        return np.zeros(0)
    qs = np.quantile(col, np.linspace(0, 1, n_bins + 1)[1:-1])
    uniq = np.unique(col)
    if uniq.size <= n_bins:  # discrete: edges midway between consecutive distinct values
        return np.asarray((uniq[:-1] + uniq[1:]) / 2.0)
    edges = np.unique(qs)
    # keep edges strictly inside the data range so both tails have mass
    return edges[(edges > uniq[0]) & (edges <= uniq[-1])]


def prediction_histograms(
    probs: np.ndarray, confidence_edges: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted class per row, predicted-class histogram and confidence histogram.

    ``probs`` is ``[n, n_classes]``; the confidence is the largest probability of a row, binned by
    ``confidence_edges`` like the features (``(-inf, c0), [c0, c1), ..., [c_last, +inf)``).
    Returns ``(predicted [n], class_counts [n_classes], confidence_counts [len(edges) + 1])``.
    """
    p = np.asarray(probs)
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    edges = np.asarray(confidence_edges, dtype=np.float64)
    cls = np.bincount(pred, minlength=p.shape[1])
    conf_bins = np.bincount(np.searchsorted(edges, conf, side="right"), minlength=edges.size + 1)
    return pred, cls, conf_bins


def with_predictions(profile: ReferenceProfile, probs: np.ndarray) -> ReferenceProfile:
    """A copy of ``profile`` with the model's predictions on reference data recorded.

    Call it after training, with the trained model's probabilities on (held-out) reference data,
    so that the server compares the fleet's predicted-class and confidence histograms with what
    this very model produced on data of the training distribution.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != profile.n_classes or not np.all(np.isfinite(p)):
        raise ValueError(f"probs must be finite [n, {profile.n_classes}], got shape {p.shape}")
    _, cls, conf = prediction_histograms(p, profile.confidence_bin_edges)
    return profile.model_copy(
        update={
            "prediction_counts": [int(c) for c in cls],
            "confidence_counts": [int(c) for c in conf],
        }
    )


def build_reference(
    x: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    n_classes: int,
    *,
    n_bins: int = DEFAULT_N_BINS,
) -> ReferenceProfile:
    """Reference profile of training data ``x`` (``[n, features]`` or ``[n, ...]``) and labels."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[1] != len(feature_names):
        raise ValueError(f"{flat.shape[1]} features but {len(feature_names)} feature names")
    feats = []
    bin_indices = []
    for j, name in enumerate(feature_names):
        col = flat[:, j]
        ok = np.isfinite(col)
        finite = col[ok]
        edges = quantile_edges(finite, n_bins)
        idx = np.searchsorted(edges, finite, side="right")
        counts = np.bincount(idx, minlength=edges.size + 1)
        rows = np.full(col.size, -1, dtype=np.int64)
        rows[ok] = idx
        bin_indices.append(rows)
        feats.append(
            FeatureReference(
                name=name,
                bin_edges=[float(e) for e in edges],
                bin_counts=[int(c) for c in counts],
                count=int(finite.size),
                mean=float(finite.mean()) if finite.size else 0.0,
                variance=float(finite.var()) if finite.size else 0.0,
                min=float(finite.min()) if finite.size else 0.0,
                max=float(finite.max()) if finite.size else 0.0,
            )
        )
    class_counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    scores = score_matrix(bin_indices, [f.bin_counts for f in feats])
    return ReferenceProfile(
        n_samples=int(flat.shape[0]),
        features=feats,
        class_counts=[int(c) for c in class_counts],
        score_traces=correlation_traces(scores),
    )

