"""One device's drift as *change*: its recent windows against its own healthy baseline.

A device's summary against the version's reference mixes two things: how the device's data
always differed from the fleet's (its label mix, its sensor: standing non-IID-ness) and how it
changed since (drift). :class:`DeviceBaseline` keeps, for one device and model version:

* **windows**: the rows between two summaries. A device sends either cumulative summaries (the
  edge ClientApp: everything since the version was installed) or summaries of separate windows
  (telemetry, the simulated devices). Successive cumulative summaries are turned into the window
  between them (counts and moments subtract exactly: Chan's merge run backwards); with
  ``kind="auto"`` a summary with more rows whose every bin count is at least the previous one's
  is read as a continuation, anything else as a window of its own; an identical summary brings
  no new rows;
* **baseline**: the device's first windows on the version merged until they hold
  ``baseline_rows`` rows, then frozen — its own healthy period on that version (a new version
  starts a new baseline: the fleet is healthy on it once a run trained on the new data);
* **recent**: the newest windows merged until they hold ``min_rows`` rows (one window when it is
  large enough): what the device sees now, not since the install.

:meth:`DeviceBaseline.reading` gives ``change`` (:func:`~edgefleet.drift.effect.moment_shift` of
recent against the baseline), ``difference`` (recent against the version's reference) and the
labelled accuracies of both (``label_total`` / ``label_correct`` tracked the same way), whose
difference is the cost of the change where devices have labels.

:func:`refreshed_reference` gives a version its own reference: the plan's bins filled with the
merged summaries of the clients it was trained on. Numpy only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgefleet.drift.effect import (
    DEFAULT_SCALE_FLOOR,
    Moments,
    feature_scales,
    moment_shift,
    spread_factors,
)
from edgefleet.drift.packed import PackedSummary
from edgefleet.drift.reference import ReferenceProfile
from edgefleet.drift.state import chan_merge
from edgefleet.drift.summary import DriftSummary, flat_bins, fold_counts

MAX_WINDOWS = 16  # newest windows kept per device
SummaryKind = Literal["auto", "cumulative", "windows"]
#: Either form of a device's summary: the pydantic model (REST telemetry) or the packed vector
#: of a Flower reply (:mod:`edgefleet.drift.packed`).
AnySummary = DriftSummary | PackedSummary


@dataclass(frozen=True)
class BaselineConfig:
    """Window sizes of :class:`DeviceBaseline` (see the module notes).

    Parameters
    ----------
    min_rows : int (default: 50)
        Recent windows are merged, newest first, until they hold this many rows; with fewer
        rows in all of them the device has no reading yet.
    baseline_rows : int (default: 100)
        Rows of a device's first windows on a version that make its baseline.
    min_labels : int (default: 30)
        Labelled predictions the baseline and the recent windows each need before their
        accuracies are compared.
    scale_floor : float (default: 0.5)
        Floor of a feature's scale, times the median feature deviation
        (:func:`edgefleet.drift.effect.feature_scales`).
    kind : {"auto", "cumulative", "windows"} (default: "auto")
        What the device's summaries are (see the module notes).
    """

    min_rows: int = 50
    baseline_rows: int = 100
    min_labels: int = 30
    scale_floor: float = DEFAULT_SCALE_FLOOR
    kind: SummaryKind = "auto"

    def __post_init__(self) -> None:
        if self.min_rows < 2 or self.baseline_rows < 2 or self.min_labels < 1:
            raise ValueError("min_rows and baseline_rows must be >= 2, min_labels >= 1")
        if not self.scale_floor > 0:
            raise ValueError("scale_floor must be > 0")


#: Window sizes for telemetry (separate windows per device): a baseline of 300 rows (three
#: windows of a busy device) keeps its accuracy's noise below that of the recent window.
TELEMETRY_BASELINE = BaselineConfig(baseline_rows=300, kind="windows")


@dataclass(frozen=True)
class Window:
    """Rows of one device between two summaries: feature moments and labelled predictions."""

    rows: int
    moments: Moments
    label_total: int = 0
    label_correct: int = 0

    @classmethod
    def of(cls, s: AnySummary) -> Window:
        if isinstance(s, PackedSummary):
            moments = Moments(s.counts().astype(np.float64), s.mean, s.variance())
            return cls(s.n, moments, int(s.lab_total.sum()), int(s.lab_correct.sum()))
        return cls(s.n, Moments.of_summary(s), sum(s.label_total), sum(s.label_correct))

    def merged(self, other: Window) -> Window:
        a, b = self.moments, other.moments
        mean, m2 = chan_merge(a.n, a.mean, a.var * a.n, b.n, b.mean, b.var * b.n)
        n = a.n + b.n
        var = np.divide(m2, n, out=np.zeros_like(n), where=n > 0)
        return Window(self.rows + other.rows, Moments(n, mean, var),
                      self.label_total + other.label_total,
                      self.label_correct + other.label_correct)

    def minus(self, older: Window) -> Window | None:
        """The rows of this cumulative window that ``older`` (a prefix of it) does not hold."""
        a, c = older.moments, self.moments
        nb = c.n - a.n
        if self.rows <= older.rows or np.any(nb < 0):
            return None
        mb = np.divide(c.n * c.mean - a.n * a.mean, nb, out=np.zeros_like(nb), where=nb > 0)
        m2b = c.var * c.n - a.var * a.n - np.divide(
            (mb - a.mean) ** 2 * a.n * nb, c.n, out=np.zeros_like(nb), where=c.n > 0)
        var = np.divide(np.maximum(m2b, 0.0), nb, out=np.zeros_like(nb), where=nb > 0)
        return Window(self.rows - older.rows, Moments(nb, mb, var),
                      max(0, self.label_total - older.label_total),
                      max(0, self.label_correct - older.label_correct))

    def accuracy(self, min_labels: int) -> float | None:
        """Labelled accuracy, from ``min_labels`` labelled predictions on."""
        if self.label_total < min_labels:
            return None
        return self.label_correct / self.label_total


@dataclass(frozen=True)
class Reading:
    """A device's drift now: change against its baseline, difference against the reference.

    ``change`` is ``None`` until a window arrives after the baseline is complete (before, the
    recent rows are the baseline's own); accuracies are ``None`` without ``min_labels``
    labelled predictions.
    """

    rows: int
    change: float | None
    difference: float
    baseline_accuracy: float | None = None
    recent_accuracy: float | None = None
    baseline_labels: int = 0
    recent_labels: int = 0

    @property
    def accuracy_drop(self) -> float | None:
        if self.baseline_accuracy is None or self.recent_accuracy is None:
            return None
        return self.baseline_accuracy - self.recent_accuracy

    @property
    def accuracy_drop_se(self) -> float | None:
        """Standard error of :attr:`accuracy_drop` (two independent binomial proportions)."""
        a, b = self.baseline_accuracy, self.recent_accuracy
        if a is None or b is None:
            return None
        return float(np.sqrt(a * (1 - a) / self.baseline_labels
                             + b * (1 - b) / self.recent_labels))


@dataclass
class DeviceBaseline:
    """The baseline and recent windows of one device on one version (see the module notes)."""

    version: int
    config: BaselineConfig = field(default_factory=BaselineConfig)
    last: AnySummary | None = None
    windows: deque[Window] = field(default_factory=lambda: deque(maxlen=MAX_WINDOWS))
    baseline: Window | None = None
    baseline_done: bool = False
    after_baseline: int = 0  # windows since the baseline was complete

    def observe(self, summary: AnySummary) -> bool:
        """Take the device's next summary; whether it brought new rows."""
        if self.last is not None and _same(summary, self.last):
            return False
        window = self._window(summary)
        self.last = summary
        if window.rows <= 0:
            return False
        self.windows.append(window)
        if self.baseline_done:
            self.after_baseline += 1
        else:
            self.baseline = window if self.baseline is None else self.baseline.merged(window)
            self.baseline_done = self.baseline.rows >= self.config.baseline_rows
        return True

    def _window(self, summary: AnySummary) -> Window:
        current = Window.of(summary)
        last, kind = self.last, self.config.kind
        if last is None or kind == "windows":
            return current
        continued = kind == "cumulative" or (summary.n > last.n and _covers(summary, last))
        diff = current.minus(Window.of(last)) if continued else None
        return diff if diff is not None else current

    def recent(self) -> Window | None:
        """The newest windows merged until they hold ``min_rows`` rows (``None``: too few)."""
        out: Window | None = None
        for w in reversed(self.windows):
            out = w if out is None else out.merged(w)
            if out.rows >= self.config.min_rows:
                return out
        return None

    def reading(self, scales: np.ndarray, reference: Moments, spread: np.ndarray | None = None
                ) -> Reading | None:
        """Change, difference and accuracies now (``None`` before ``min_rows`` rows); ``scales``
        and ``spread`` as :func:`~edgefleet.drift.effect.moment_shift` takes them."""
        recent = self.recent()
        if recent is None:
            return None
        labels = self.config.min_labels
        base = self.baseline if self.baseline_done and self.after_baseline else None
        return Reading(
            rows=recent.rows,
            change=None if base is None else moment_shift(recent.moments, base.moments,
                                                          scales, spread),
            difference=moment_shift(recent.moments, reference, scales, spread),
            baseline_accuracy=None if base is None else base.accuracy(labels),
            recent_accuracy=recent.accuracy(labels),
            baseline_labels=0 if base is None else base.label_total,
            recent_labels=recent.label_total,
        )


def _same(a: AnySummary, b: AnySummary) -> bool:
    """Whether two summaries are the same numbers (packed vectors compare as bytes)."""
    if isinstance(a, PackedSummary) or isinstance(b, PackedSummary):
        return isinstance(a, PackedSummary) and a.same(b)
    return a == b


def _bins(s: AnySummary) -> np.ndarray:
    return s.bins if isinstance(s, PackedSummary) else flat_bins(s)


def _covers(summary: AnySummary, last: AnySummary) -> bool:
    """Whether every bin count of ``summary`` is at least ``last``'s (same layout)."""
    now, before = _bins(summary), _bins(last)
    return now.shape == before.shape and bool(np.all(now >= before))


class Baselines:
    """:class:`DeviceBaseline` s of many devices of one model against one reference."""

    def __init__(self, reference: ReferenceProfile, config: BaselineConfig | None = None) -> None:
        self.reference = reference
        self.config = config or BaselineConfig()
        self.scales = feature_scales(reference, self.config.scale_floor)
        self.spread = spread_factors(reference)
        self.reference_moments = Moments.of_reference(reference)
        self.devices: dict[str, DeviceBaseline] = {}
        self.readings: dict[str, Reading] = {}

    def observe(self, device: str, summary: AnySummary) -> None:
        """Take ``device``'s next summary (it must fit the reference: ``check_reference``).

        A summary of another version than the device's last starts a new baseline.
        """
        summary.check_reference(self.reference)
        state = self.devices.get(device)
        if state is None or state.version != summary.version:
            state = self.devices[device] = DeviceBaseline(summary.version, self.config)
            self.readings.pop(device, None)
        if state.observe(summary):
            reading = state.reading(self.scales, self.reference_moments, self.spread)
            if reading is not None:
                self.readings[device] = reading

    def reading(self, device: str) -> Reading | None:
        return self.readings.get(device)


def refreshed_reference(profile: ReferenceProfile, summary: DriftSummary) -> ReferenceProfile:
    """``profile``'s bins filled with the rows of ``summary``: a version's own reference.

    ``summary`` is a :class:`~edgefleet.drift.summary.DriftSummary` made against ``profile``
    (for a federated version: the merge of its training clients' summaries). Bin edges, ranges
    and names stay, so the fingerprint does and devices' summaries still fit; each feature's
    counts (under- and overflow folded into the end bins), count, mean and variance come from
    the summary, the class counts from its labelled predictions when it has any. The recorded
    predictions are dropped (they were another model's) and the score traces kept (the
    features' correlation cannot be read from summaries). A feature the summary never saw keeps
    its old statistics.
    """
    summary.check_reference(profile)
    variance = summary.variance()
    feats = []
    for j, f in enumerate(profile.features):
        n = summary.counts[j]
        if n == 0:
            feats.append(f)
            continue
        feats.append(f.model_copy(update={
            "bin_counts": [int(c) for c in fold_counts(summary.bin_counts[j])], "count": int(n),
            "mean": float(summary.mean[j]), "variance": float(max(0.0, variance[j]))}))
    labelled = sum(summary.label_total) > 0
    return ReferenceProfile(
        n_samples=max(int(summary.n), max(f.count for f in feats) if feats else 0),
        features=feats,
        class_counts=list(summary.label_total) if labelled else list(profile.class_counts),
        confidence_bin_edges=list(profile.confidence_bin_edges),
        score_traces=profile.score_traces,
    )
