"""The device-side drift summary: a bounded, versioned, mergeable record of what a device has seen.

Layout of one feature's ``bin_counts`` (the reference has ``k`` interior edges ``e_0 < … < e_k-1``
and a training range ``[lo, hi]`` with ``lo < e_0`` and ``e_k-1 <= hi``)::

    [ underflow | [lo, e_0) | [e_0, e_1) | … | [e_k-1, hi] | overflow ]
      x < lo                                                 x > hi

so ``k + 3`` counts. The reference's open-ended first bin ``(-inf, e_0)`` is *underflow + the
first bin* and its last bin ``[e_k-1, +inf)`` is *the last bin + overflow*
(:func:`fold_counts`); the training data has no under- or overflow by construction. Non-finite
values (NaN and ±inf) are counted in ``nan_counts`` and nowhere else, so for every feature
``sum(bin_counts[j]) + nan_counts[j] == n``, and ``mean``/``m2``/``min``/``max`` describe the
``n - nan_counts[j]`` finite values (``min``/``max`` are ``None`` when there are none).

``mean`` and ``m2`` (sum of squared deviations) merge with Chan et al.'s parallel formulas, the
mean written as a weighted sum so that merging is exactly commutative; counts, ``min`` and ``max``
merge exactly; moments are associative up to floating-point rounding (relative 1e-12).

Construction (``DriftSummary(...)``, ``model_validate``, ``model_validate_json``,
:meth:`DriftSummary.parse`) refuses with :class:`~edgefleet.errors.SummaryError` another schema
version, inconsistent lengths or totals, negative counts or counts above :data:`MAX_COUNT`,
non-finite moments and wrong types; the checks run over all features at once (numpy arrays).
Nested in another model (``edgefleet.wire.TelemetryReport``) the same messages surface as a
:class:`pydantic.ValidationError`, so a FastAPI route answers 422 without special handling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from edgefleet.drift.reference import ReferenceProfile
from edgefleet.drift.state import SCHEMA_VERSION, SummaryState, layout
from edgefleet.errors import SummaryError

MAX_FEATURES = 4096
MAX_BINS = 256  # reference bins per feature; a summary adds underflow and overflow
MAX_CLASSES = 1024
MAX_CONFIDENCE_BINS = 64
MAX_COUNT = 2**50  # any one count: sums of up to MAX_CLASSES counts stay exact in int64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DriftSummary(BaseModel):
    """Drift statistics of one device (or a merged fleet) for one model version.

    Attributes
    ----------
    schema_version
        Must be :data:`SCHEMA_VERSION`; anything else is refused.
    model, version
        The model name and version the statistics were collected for.
    reference_fingerprint
        :attr:`ReferenceProfile.fingerprint` of the reference whose bins were used.
    n
        Rows observed.
    bin_counts
        Per feature, ``[underflow, bin_0, …, bin_k, overflow]`` (see the module docstring).
    nan_counts
        Per feature, non-finite values (NaN, ±inf).
    mean, m2, min, max
        Per feature, moments (``m2`` = sum of squared deviations) and range of the finite values.
    class_counts, confidence_counts
        Predicted classes and prediction confidences (bins of the reference's
        ``confidence_bin_edges``), over the rows that had a prediction.
    label_total, label_correct
        Per true class, predictions whose label became known, and how many of those were right.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    model: str
    version: int
    reference_fingerprint: str
    n: int
    bin_counts: list[list[int]]
    nan_counts: list[int]
    mean: list[float]
    m2: list[float]
    min: list[float | None]
    max: list[float | None]
    class_counts: list[int]
    confidence_counts: list[int]
    label_total: list[int]
    label_correct: list[int]

    @model_validator(mode="before")
    @classmethod
    def _schema(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            got = data.get("schema_version")
            if got != SCHEMA_VERSION:
                raise ValueError(
                    f"schema version {got!r} is not supported (this build reads version "
                    f"{SCHEMA_VERSION})"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> DriftSummary:
        problems = _problems(self)
        if problems:
            raise ValueError(f"{self.model!r} v{self.version}: " + "; ".join(problems[:5]))
        return self

    # --- construction: every refusal is a SummaryError ---------------------------------------
    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _summary_error(exc) from None

    # Validation from JSON or a mapping runs the validators itself instead of through
    # ``__init__`` (which would validate every field and check the summary twice).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _summary_error(exc) from None

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any
    ) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise _summary_error(exc) from None

    @classmethod
    def parse(cls, data: str | bytes | Mapping[str, Any]) -> DriftSummary:
        """Validate JSON text or a mapping (:class:`SummaryError` on any refusal)."""
        if isinstance(data, str | bytes):
            return cls.model_validate_json(data)
        return cls.model_validate(data)

    @classmethod
    def empty(cls, reference: ReferenceProfile, *, model: str, version: int) -> DriftSummary:
        """A summary of no rows, laid out for ``reference``."""
        state = SummaryState.zeros(
            layout(reference), reference.n_classes, len(reference.confidence_bin_edges) + 1
        )
        return cls.from_state(state, model, version, reference.fingerprint)

    @classmethod
    def from_state(
        cls, state: SummaryState, model: str, version: int, fingerprint: str
    ) -> DriftSummary:
        """A validated summary of ``state``'s numbers."""
        return cls(**state.fields(model, version, fingerprint))

    def to_state(self) -> SummaryState:
        """This summary's numbers as a :class:`~edgefleet.drift.state.SummaryState`."""
        lengths = np.asarray(row_lengths(self), dtype=np.int64)
        bins = np.zeros((lengths.size, int(lengths.max())), dtype=np.int64)
        bins[np.arange(bins.shape[1]) < lengths[:, None]] = flat_bins(self)
        lo = np.asarray([np.inf if v is None else v for v in self.min], dtype=np.float64)
        hi = np.asarray([-np.inf if v is None else v for v in self.max], dtype=np.float64)
        return SummaryState(
            lengths,
            self.n,
            bins,
            np.asarray(self.nan_counts, dtype=np.int64),
            np.asarray(self.mean, dtype=np.float64),
            np.asarray(self.m2, dtype=np.float64),
            lo,
            hi,
            np.asarray(self.class_counts, dtype=np.int64),
            np.asarray(self.confidence_counts, dtype=np.int64),
            np.asarray(self.label_total, dtype=np.int64),
            np.asarray(self.label_correct, dtype=np.int64),
        )

    # --- derived ----------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.bin_counts)

    @property
    def counts(self) -> list[int]:
        """Finite values per feature."""
        return [self.n - c for c in self.nan_counts]

    @property
    def n_predicted(self) -> int:
        return sum(self.class_counts)

    def variance(self) -> np.ndarray:
        """Population variance per feature (0 where a feature has no finite value)."""
        cnt = np.asarray(self.counts, dtype=np.float64)
        return np.asarray(self.m2) / np.maximum(cnt, 1.0)

    # --- merging ----------------------------------------------------------------------------
    def check_compatible(self, other: DriftSummary) -> None:
        """Raise :class:`SummaryError` unless ``other`` can be merged into this summary."""
        if (other.model, other.version) != (self.model, self.version):
            raise SummaryError(
                f"cannot merge a summary of {other.model!r} v{other.version} into one of "
                f"{self.model!r} v{self.version}"
            )
        if other.reference_fingerprint != self.reference_fingerprint:
            raise SummaryError(
                "cannot merge summaries made against different reference bins (fingerprint "
                f"{other.reference_fingerprint[:12]}… vs {self.reference_fingerprint[:12]}…)"
            )
        if (
            row_lengths(other) != row_lengths(self)
            or len(other.class_counts) != len(self.class_counts)
            or len(other.confidence_counts) != len(self.confidence_counts)
        ):
            raise SummaryError("cannot merge summaries with different bin layouts")

    def check_reference(self, reference: ReferenceProfile) -> None:
        """Raise :class:`SummaryError` unless this summary was made against ``reference``."""
        if self.reference_fingerprint != reference.fingerprint:
            raise SummaryError(
                f"summary bins do not match the reference (fingerprint "
                f"{self.reference_fingerprint[:12]}…, reference {reference.fingerprint[:12]}…)"
            )
        if (
            row_lengths(self) != layout(reference).tolist()
            or len(self.class_counts) != reference.n_classes
            or len(self.confidence_counts) != len(reference.confidence_bin_edges) + 1
        ):
            raise SummaryError("summary layout does not match the reference's bins")

    def merge(self, other: DriftSummary) -> DriftSummary:
        """The summary of both inputs' rows (a new object; both inputs are left as they were)."""
        self.check_compatible(other)
        merged = self.to_state().merged(other.to_state())
        return self.from_state(merged, self.model, self.version, self.reference_fingerprint)

    @classmethod
    def merge_all(cls, summaries: Iterable[DriftSummary]) -> DriftSummary:
        """Merge a non-empty iterable of compatible summaries."""
        items = list(summaries)
        if not items:
            raise SummaryError("nothing to merge: no summaries given")
        head = items[0]
        state = head.to_state()
        for s in items[1:]:
            head.check_compatible(s)
            state = state.merged(s.to_state())
        return cls.from_state(state, head.model, head.version, head.reference_fingerprint)


class SummaryValidationError(SummaryError, ValueError):
    """A :class:`SummaryError` that is also a ``ValueError``, so that pydantic reports it as a
    validation error (HTTP 422 in FastAPI) when the summary is nested in another model."""


def _summary_error(exc: ValidationError) -> SummaryError:
    """The :class:`SummaryError` behind ``exc``, or one listing pydantic's findings."""
    errors = exc.errors(include_url=False)
    inner = errors[0].get("ctx", {}).get("error") if len(errors) == 1 else None
    if isinstance(inner, SummaryError):
        return inner
    parts = []
    for err in errors[:5]:
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return SummaryValidationError("invalid drift summary: " + ("; ".join(parts) or str(exc)))


def row_lengths(s: DriftSummary) -> list[int]:
    """Bins per feature row of a summary."""
    return [len(r) for r in s.bin_counts]


def fold_counts(bin_counts: list[int]) -> list[int]:
    """A summary row's counts in the reference's ``k + 1`` bins (under/overflow folded in)."""
    if len(bin_counts) < 3:
        raise SummaryError("a feature row needs underflow, at least one bin and overflow")
    inner = list(bin_counts[1:-1])
    inner[0] += bin_counts[0]
    inner[-1] += bin_counts[-1]
    return inner


def flat_bins(s: DriftSummary) -> np.ndarray:
    """All of ``s``'s bin counts, feature rows one after another, as one int64 array."""
    return np.fromiter(chain.from_iterable(s.bin_counts), dtype=np.int64,
                       count=sum(map(len, s.bin_counts)))


def _count_problems(s: DriftSummary) -> tuple[list[str], np.ndarray]:
    """Counts that are negative or above :data:`MAX_COUNT`, and :func:`flat_bins` of ``s``."""
    try:
        bins = flat_bins(s)
        others = np.fromiter(chain((s.n,), s.nan_counts, s.class_counts, s.confidence_counts,
                                   s.label_total, s.label_correct), dtype=np.int64)
    except OverflowError:  # beyond int64
        return [f"counts must be in 0..{MAX_COUNT}"], np.zeros(0, dtype=np.int64)
    if bins.min(initial=0) < 0 or others.min() < 0:
        return ["negative counts"], bins
    if bins.max(initial=0) > MAX_COUNT or others.max() > MAX_COUNT:
        return [f"counts must be in 0..{MAX_COUNT}"], bins
    return [], bins


def _problems(s: DriftSummary) -> list[str]:
    """Everything wrong with ``s`` (empty when it is valid)."""
    out: list[str] = []
    f = len(s.bin_counts)
    if not s.model or len(s.model) > 256:
        out.append("model name must have 1-256 characters")
    if s.version < 0:
        out.append(f"version must be >= 0, got {s.version}")
    if not _HEX64.match(s.reference_fingerprint):
        out.append("reference_fingerprint must be 64 lowercase hex digits")
    if not 1 <= f <= MAX_FEATURES:
        return [*out, f"{f} features (allowed 1..{MAX_FEATURES})"]
    per_feature: dict[str, list[Any]] = {"nan_counts": s.nan_counts, "mean": s.mean,
                                         "m2": s.m2, "min": s.min, "max": s.max}
    bad_len = [k for k, v in per_feature.items() if len(v) != f]
    if bad_len:
        return [*out, f"{', '.join(bad_len)} must have one entry per feature ({f})"]
    lengths = np.fromiter(map(len, s.bin_counts), dtype=np.int64, count=f)
    if lengths.min() < 3 or lengths.max() > MAX_BINS + 2:
        out.append(f"each feature needs 3..{MAX_BINS + 2} bin counts")
    c = len(s.class_counts)
    if not 1 <= c <= MAX_CLASSES or len(s.label_total) != c or len(s.label_correct) != c:
        out.append(
            f"class_counts/label_total/label_correct need one entry per class (1..{MAX_CLASSES})"
        )
    if not 1 <= len(s.confidence_counts) <= MAX_CONFIDENCE_BINS:
        out.append(f"confidence_counts needs 1..{MAX_CONFIDENCE_BINS} bins")
    count_problems, bins = _count_problems(s)
    out += count_problems
    if out:
        return out
    return _feature_problems(s, lengths, bins) + _total_problems(s)


def _feature_problems(s: DriftSummary, lengths: np.ndarray, bins: np.ndarray) -> list[str]:
    """Moments, ranges and bin totals of all features, checked as arrays at once."""
    out: list[str] = []
    mean, m2 = np.asarray(s.mean, dtype=np.float64), np.asarray(s.m2, dtype=np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(m2))):
        out.append("mean and m2 must be finite (NaN/inf moments)")
    elif np.any(m2 < 0):
        out.append("m2 must be >= 0")
    moments_ok = not out
    cnt = s.n - np.asarray(s.nan_counts, dtype=np.int64)
    sums = np.add.reduceat(bins, np.cumsum(lengths) - lengths)
    lo_none = np.fromiter((v is None for v in s.min), dtype=bool, count=cnt.size)
    hi_none = np.fromiter((v is None for v in s.max), dtype=bool, count=cnt.size)
    lo = np.asarray(s.min, dtype=np.float64)  # None -> NaN
    hi = np.asarray(s.max, dtype=np.float64)
    bad_sum = sums != cnt
    empty = ~bad_sum & (cnt == 0)
    bad_empty = empty & (~lo_none | ~hi_none | (mean != 0.0) | (m2 != 0.0))
    live = ~bad_sum & ~empty
    with np.errstate(invalid="ignore", over="ignore"):
        bad_range = live & ~(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
        checked = live & ~bad_range & moments_ok
        scale = np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
        tol = 1e-9 * scale
        bad_mean = checked & ~((lo - tol <= mean) & (mean <= hi + tol))
        bound = cnt * ((hi - lo) ** 2 / 4.0 + tol * scale) * (1 + 1e-9)
        bad_m2 = checked & ~bad_mean & (m2 > bound)
    for j in np.flatnonzero(bad_sum | bad_empty | bad_range | bad_mean | bad_m2).tolist():
        if bad_sum[j]:
            out.append(f"feature {j}: bins sum to {int(sums[j])} but n - nan = {int(cnt[j])}")
        elif bad_empty[j]:
            out.append(f"feature {j}: no finite values but non-empty moments/range")
        elif bad_range[j]:
            out.append(f"feature {j}: min/max must be finite with min <= max")
        elif bad_mean[j]:
            out.append(f"feature {j}: mean {s.mean[j]} outside [min, max]")
        else:
            out.append(f"feature {j}: m2 too large for its range (variance > (max - min)²/4)")
    return out


def _total_problems(s: DriftSummary) -> list[str]:
    """Prediction, confidence and label totals that do not add up."""
    out: list[str] = []
    total = np.asarray(s.label_total, dtype=np.int64)
    predicted = int(np.asarray(s.class_counts, dtype=np.int64).sum())
    if int(np.asarray(s.confidence_counts, dtype=np.int64).sum()) != predicted:
        out.append("confidence_counts and class_counts must have the same total")
    if predicted > s.n:
        out.append(f"{predicted} predictions for {s.n} rows")
    if np.any(np.asarray(s.label_correct, dtype=np.int64) > total):
        out.append("label_correct exceeds label_total")
    if int(total.sum()) > predicted:
        out.append("more labelled predictions than predictions")
    return out
