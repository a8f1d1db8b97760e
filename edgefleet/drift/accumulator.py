"""The hot-path drift accumulator: numpy arrays updated in place, one vectorised pass per batch.

A device keeps one :class:`DriftAccumulator` per model version and reports
:meth:`DriftAccumulator.take` (a :class:`~edgefleet.drift.summary.DriftSummary`) once per telemetry
window::

    acc = DriftAccumulator(manifest.reference, model=manifest.name, version=3)
    probs = runtime.predict(x)
    acc.update(x, probs)                 # a batch: O(features) per row, vectorised
    acc.observe(x[0], probs[0])          # one row: buffered, flushed in batches of buffer_size
    report.drift = acc.take()            # the window's summary; the accumulator starts afresh

Imports nothing heavier than numpy and pydantic.
"""

from __future__ import annotations

import math

import numpy as np

from edgefleet.drift.reference import ReferenceProfile, prediction_histograms
from edgefleet.drift.state import SummaryState, chan_merge, layout
from edgefleet.drift.summary import DriftSummary
from edgefleet.errors import InputError, SummaryError

_CHUNK_ELEMENTS = 1 << 20  # rows x features per vectorised pass (bounds the temporaries)


class DriftAccumulator:
    """A mutable drift summary for one model version, laid out by a reference profile.

    Parameters
    ----------
    reference
        The plan manifest's :class:`~edgefleet.drift.reference.ReferenceProfile`.
    model, version
        The model name and version the rows are predicted with.
    buffer_size
        Rows :meth:`observe` buffers before one vectorised update (default 64).

    Notes
    -----
    Each update bins every feature of every row at once: a value's bin index is the number of
    its feature's lower edges ``[min, e_0, …, e_k-1]`` it reaches (``k + 1`` vectorised
    comparisons over the ``[rows, features]`` batch), overflow where it exceeds the training
    ``max``, and a separate column for non-finite values; one ``bincount`` then adds the batch.
    The batch's moments merge in with Chan's formulas. Inputs are checked before anything
    changes: a refused batch or merge leaves the accumulator as it was.
    """

    def __init__(
        self, reference: ReferenceProfile, *, model: str, version: int, buffer_size: int = 64
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self.reference = reference
        self.model = model
        self.version = version
        self.fingerprint = reference.fingerprint
        feats = reference.features
        self._lengths = layout(reference)
        self._f = len(feats)
        self._c = reference.n_classes
        self._conf_edges = np.asarray(reference.confidence_bin_edges, dtype=np.float64)
        k_max = max((len(f.bin_edges) for f in feats), default=0)
        self._lower = np.full((self._f, k_max + 1), np.inf)
        for j, f in enumerate(feats):
            self._lower[j, 0] = f.min
            self._lower[j, 1 : len(f.bin_edges) + 1] = f.bin_edges
        self._lower_t = np.ascontiguousarray(self._lower.T)
        self._idx_dtype = np.uint8 if k_max + 1 < 255 else np.uint16
        self._hi = np.asarray([f.max for f in feats], dtype=np.float64)
        self._over = self._lengths - 1
        self._width = int(self._lengths.max(initial=3))
        self._rows = np.arange(self._f)
        self._row_shape = (self._f,)
        self._offsets = self._rows * (self._width + 1)
        self._chunk = max(1, _CHUNK_ELEMENTS // max(1, self._f))
        self._state = self._zeros()
        self._buf_x = np.empty((buffer_size, self._f))
        self._buf_p = np.zeros((buffer_size, self._c))
        self._buf_y = np.full(buffer_size, -1, dtype=np.int64)
        self._buf_has_p = np.zeros(buffer_size, dtype=bool)
        self._buffered = 0

    def _zeros(self) -> SummaryState:
        return SummaryState.zeros(self._lengths, self._c, self._conf_edges.size + 1)

    @property
    def n(self) -> int:
        """Rows counted so far (including buffered ones)."""
        return self._state.n + self._buffered

    # --- updates ----------------------------------------------------------------------------
    def update(
        self, x: np.ndarray, probs: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> None:
        """Add a batch: raw features ``[n, ...]``, optional probabilities ``[n, C]`` and labels.

        ``labels`` (``[n]`` ints, ``-1`` where unknown) need ``probs``: a label judges a
        prediction. Raises :class:`~edgefleet.errors.InputError` on wrong shapes or non-finite
        probabilities, without changing anything.
        """
        xs, ps, ys = self._check(x, probs, labels)
        self._apply(xs, ps, ys)

    def observe(
        self, x: np.ndarray, probs: np.ndarray | None = None, label: int | None = None
    ) -> None:
        """Add one row (features ``[...]``, probabilities ``[C]``), buffered for a batch update.

        Checked like :meth:`update`; the buffer is applied when full, and by :meth:`flush`,
        :meth:`to_summary` and :meth:`take`.
        """
        i = self._buffered
        try:  # written into the free buffer slot; it only counts once every check passed
            self._buf_x[i] = x if np.shape(x) == self._row_shape else np.reshape(x, self._f)
            if probs is not None:
                if np.size(probs) != self._c:
                    raise ValueError(f"{np.size(probs)} probabilities")
                self._buf_p[i] = np.reshape(probs, self._c)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"a row must have {self._f} features and {self._c} probabilities: {exc}"
            ) from exc
        if probs is not None and not math.isfinite(self._buf_p[i].sum()):
            raise InputError(f"probabilities must be {self._c} finite values")
        if label is not None and (probs is None or not -1 <= int(label) < self._c):
            raise InputError(f"a label must be in [0, {self._c}) (or -1) and come with probs")
        self._buf_has_p[i] = probs is not None
        self._buf_y[i] = -1 if label is None else int(label)
        self._buffered = i + 1
        if self._buffered == self._buf_x.shape[0]:
            self.flush()

    def flush(self) -> None:
        """Apply the rows :meth:`observe` has buffered."""
        k, self._buffered = self._buffered, 0
        if k == 0:
            return
        has_p = self._buf_has_p[:k]
        self._apply(self._buf_x[:k], None, None)
        if has_p.any():
            self._apply_predictions(self._buf_p[:k][has_p], self._buf_y[:k][has_p])

    def _check(
        self, x: np.ndarray, probs: np.ndarray | None, labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        xa = np.asarray(x, dtype=np.float64)
        if xa.ndim < 1 or xa.size != xa.shape[0] * self._f:
            raise InputError(
                f"features must be [n, {self._f}] (or [n, ...] of that size), got shape {xa.shape}"
            )
        xs = xa.reshape(xa.shape[0], self._f)
        ps = ys = None
        if probs is not None:
            ps = np.asarray(probs, dtype=np.float64)
            if ps.shape != (xs.shape[0], self._c) or not np.all(np.isfinite(ps)):
                raise InputError(
                    f"probabilities must be finite [{xs.shape[0]}, {self._c}], got shape {ps.shape}"
                )
        if labels is not None:
            if ps is None:
                raise InputError("labels need the probabilities they judge")
            ya = np.asarray(labels)
            if ya.shape != (xs.shape[0],) or not np.issubdtype(ya.dtype, np.integer):
                raise InputError(f"labels must be integers [{xs.shape[0]}], got {ya.shape}")
            if ya.size and (ya.min() < -1 or ya.max() >= self._c):
                raise InputError(f"labels must be in [0, {self._c}) or -1 for unknown")
            ys = ya.astype(np.int64)
        return xs, ps, ys

    def _apply(self, x: np.ndarray, probs: np.ndarray | None, labels: np.ndarray | None) -> None:
        for start in range(0, x.shape[0], self._chunk):
            self._apply_features(x[start : start + self._chunk])
        if probs is not None:
            self._apply_predictions(probs, labels)

    def _apply_features(self, x: np.ndarray) -> None:
        st, rows = self._state, x.shape[0]
        if rows == 0:
            return
        fin = np.isfinite(x)
        all_finite = bool(fin.all())
        if rows == 1 and all_finite:
            self._apply_row(x[0])
            return
        idx = self._lower_edges_reached(x)  # NaN compares False: no warning, fixed below
        idx = np.where(x > self._hi, self._over, idx)
        if not all_finite:
            idx = np.where(fin, idx, self._width)
        counts = np.bincount(
            (idx + self._offsets).ravel(), minlength=self._offsets.size * (self._width + 1)
        ).reshape(self._f, self._width + 1)
        if all_finite:
            cnt = np.full(self._f, float(rows))
            mb = x.sum(axis=0) / rows
            m2b = ((x - mb) ** 2).sum(axis=0)
            lo, hi = x.min(axis=0), x.max(axis=0)
        else:
            cnt = fin.sum(axis=0).astype(np.float64)
            mb = np.where(fin, x, 0.0).sum(axis=0) / np.maximum(cnt, 1.0)
            m2b = (np.where(fin, x - mb, 0.0) ** 2).sum(axis=0)
            lo = np.where(fin, x, np.inf).min(axis=0)
            hi = np.where(fin, x, -np.inf).max(axis=0)
        mean, m2 = chan_merge(st.counts().astype(np.float64), st.mean, st.m2, cnt, mb, m2b)
        st.bins += counts[:, : self._width]
        st.nan += counts[:, self._width]
        st.mean, st.m2 = mean, m2
        np.minimum(st.lo, lo, out=st.lo)
        np.maximum(st.hi, hi, out=st.hi)
        st.n += rows

    def _apply_row(self, row: np.ndarray) -> None:
        """One finite row: the same counts, moments by Welford's update (fewer numpy calls)."""
        st = self._state
        idx = (row[:, None] >= self._lower).sum(axis=1)
        st.bins[self._rows, np.where(row > self._hi, self._over, idx)] += 1
        count = (st.n + 1 - st.nan).astype(np.float64)
        delta = row - st.mean
        st.mean += delta / count
        st.m2 += delta * (row - st.mean)
        np.minimum(st.lo, row, out=st.lo)
        np.maximum(st.hi, row, out=st.hi)
        st.n += 1

    def _lower_edges_reached(self, x: np.ndarray) -> np.ndarray:
        """Per row and feature, how many of the feature's lower edges the value reaches."""
        if x.shape[0] <= 8:  # a few rows: one broadcast comparison has the least overhead
            return np.asarray((x[:, :, None] >= self._lower).sum(axis=2))
        idx: np.ndarray = np.zeros(x.shape, dtype=self._idx_dtype)
        reached = np.empty(x.shape, dtype=bool)
        for col in self._lower_t:  # one vectorised pass per edge column: O(rows·features)
            np.greater_equal(x, col, out=reached)
            np.add(idx, reached.view(np.uint8), out=idx)
        return idx

    def _apply_predictions(self, probs: np.ndarray, labels: np.ndarray | None) -> None:
        st = self._state
        pred, cls, conf = prediction_histograms(probs, self._conf_edges)
        st.cls += cls
        st.conf += conf
        if labels is not None:
            known = labels >= 0
            st.lab_total += np.bincount(labels[known], minlength=self._c)
            st.lab_correct += np.bincount(labels[known & (pred == labels)], minlength=self._c)

    # --- summaries --------------------------------------------------------------------------
    def to_summary(self) -> DriftSummary:
        """A validated snapshot of everything counted so far (flushes the buffer first)."""
        self.flush()
        return DriftSummary.from_state(self._state, self.model, self.version, self.fingerprint)

    def take(self) -> DriftSummary:
        """:meth:`to_summary`, then start afresh (one summary per telemetry window)."""
        summary = self.to_summary()
        self.reset()
        return summary

    def reset(self) -> None:
        """Forget everything counted (and buffered)."""
        self._buffered = 0
        self._state = self._zeros()

    @classmethod
    def from_summary(
        cls, summary: DriftSummary, reference: ReferenceProfile, *, buffer_size: int = 64
    ) -> DriftAccumulator:
        """An accumulator that continues ``summary`` (which must match ``reference``)."""
        summary.check_reference(reference)
        acc = cls(reference, model=summary.model, version=summary.version, buffer_size=buffer_size)
        acc._state = summary.to_state()
        return acc

    def merge(self, other: DriftSummary | DriftAccumulator) -> None:
        """Add another summary's rows; on :class:`SummaryError` nothing changes."""
        theirs = other.to_summary() if isinstance(other, DriftAccumulator) else other
        if (theirs.model, theirs.version) != (self.model, self.version):
            raise SummaryError(
                f"cannot merge a summary of {theirs.model!r} v{theirs.version} into one of "
                f"{self.model!r} v{self.version}"
            )
        theirs.check_reference(self.reference)
        self._state = self._state.merged(theirs.to_state())
