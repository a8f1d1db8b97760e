"""Each node's steering score: the *change* of its recent inputs against its own baseline.

Scoring a node against the plan's reference (:class:`~aggregation.selection.drift.DriftScorer`)
measures how different its data is, and in a non-IID fleet every node differs: with
Dirichlet(0.5) label shares the clean nodes of the harness's digits fleet measure 0.15–0.49 on
the effect scale against the reference from their label mix alone, and 0.00–0.18 (median 0.00)
between two of their own 100-row windows (``README.md``, drift steering).
:class:`DriftTracker` keeps every node's baseline and recent windows
(:class:`edgefleet.drift.baseline.Baselines`: the node's first ``baseline_rows`` rows on a
version, its newest ``min_rows``) and scores

* ``change``: :func:`edgefleet.drift.effect.moment_shift` of recent against the baseline (an
  effect size that grows with the shift, robust to near-constant features, without
  sample-size bias), once the baseline is complete;
* before that (a node's first windows are its baseline, so its change is measured from its
  next window on), the node's ``difference`` against the reference in excess of the fleet's
  median difference (the fleet's standing non-IID level) when it is an outlier, so that a node
  first seen already drifted is still found while label skew alone is not.

The score in ``[0, 1]`` is ``min(1, effect / full_effect)``: the drift policy reserves slots for
nodes from ``threshold`` on, steering scales epochs and weights with it.

**A change the model already fits is not steered.** A label-prior shift moves a node's inputs
(its class mix changes) without making them any harder for the model: steering such nodes (70 %
of the slots, eight local epochs on a few classes) cost the clean nodes 11 points in the harness.
So the round loop reports each trained node's *first-epoch loss* (the received global model's
loss on its first pass over the local data, ``first-epoch-loss``, the same at any number of
epochs): once a node that drifted has trained since, it keeps its score only while that loss
is above the median first-epoch loss of the nodes that did not drift (over the last
``loss_rounds`` rounds); otherwise its score is 0 until its loss rises again. Nodes that do not
report the loss are scored by their change alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MetricRecord

from aggregation.errors import SettingsError
from aggregation.selection.drift import DEFAULT_THRESHOLD
from aggregation.selection.reading_table import NEVER, ReadingTable
from edgefleet import flower_keys as fk
from edgefleet.drift import ReferenceProfile
from edgefleet.drift.baseline import AnySummary, BaselineConfig, Baselines, Reading
from edgefleet.drift.stacked import observe_many
from edgefleet.errors import SummaryError

DEFAULT_FULL_EFFECT = 0.4
DEFAULT_BASELINE = BaselineConfig()


@dataclass(frozen=True)
class TrackerConfig:
    """How node drift is scored (see the module notes).

    Parameters
    ----------
    full_effect : float (default: 0.4)
        Effect size (bias-corrected RMS standardized shift) at which a node's score reaches 1.
        Two 100-row windows of one clean digits client differ by 0.00–0.18 (median 0.00); a
        brightness offset of +1 grey level in 16 measures about 0.3, +8 about 2.4, Gaussian
        noise of one standard deviation 0.17 (it moves only the spread).
    baseline : BaselineConfig (default: BaselineConfig())
        Window sizes: baseline rows, recent rows, labels (``edgefleet.drift.baseline``).
    threshold : float (default: 0.5)
        Score from which a node counts as drifted (the drift policy's threshold).
    loss_rounds : int (default: 5)
        How many rounds a first-epoch loss counts for (see the module notes).
    outlier_z : float (default: 4.0)
        Before a node has a change, its difference counts only beyond this many robust
        deviations above the fleet's median (label skew spreads the clean nodes over about
        ±2 of them on the harness's fleet).
    """

    full_effect: float = DEFAULT_FULL_EFFECT
    baseline: BaselineConfig = DEFAULT_BASELINE
    threshold: float = DEFAULT_THRESHOLD
    loss_rounds: int = 5
    outlier_z: float = 4.0

    def __post_init__(self) -> None:
        if (not self.full_effect > 0 or not 0 < self.threshold <= 1 or self.loss_rounds < 1
                or self.outlier_z < 0):
            raise SettingsError("need full_effect > 0, threshold in (0, 1], loss_rounds >= 1, "
                                "outlier_z >= 0")


class DriftTracker:
    """Per-node baselines and the steering score (see the module notes)."""

    def __init__(self, reference: ReferenceProfile, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.baselines = Baselines(reference, self.config.baseline)
        self.losses: dict[int, tuple[int, float]] = {}  # node -> (round, first-epoch loss)
        self.drifted_since: dict[int, int] = {}  # node -> round its change crossed threshold
        self.round = 0
        self._last: dict[int, AnySummary] = {}  # node -> the summary object it sent last
        self.table = ReadingTable()  # the readings and losses as arrays, for round_scores

    def trained(self, server_round: int, losses: Mapping[int, float]) -> None:
        """Record the first-epoch loss of every node that trained in ``server_round``."""
        for node, loss in losses.items():
            if np.isfinite(loss):
                self.losses[node] = (server_round, float(loss))
                self.table.set_loss(node, server_round, float(loss))

    def observe(self, node: int, summary: AnySummary | None) -> None:
        """Take ``node``'s latest summary (``None``, or one of other bins: ignored).

        The object taken last for ``node`` again (an answer carried over from an earlier round)
        brings no new rows and is skipped without comparing it.
        """
        if summary is None or self._last.get(node) is summary:
            return
        self._last[node] = summary
        try:
            self.baselines.observe(str(node), summary)
        except SummaryError:
            return
        finally:
            self.table.set_reading(node, self.baselines.readings.get(str(node)))

    def observe_many(self, items: Iterable[tuple[int, AnySummary | None]]) -> None:
        """:meth:`observe` for many nodes (one summary each), the arithmetic stacked
        (:func:`edgefleet.drift.stacked.observe_many`)."""
        todo = []
        for node, summary in items:
            if summary is None or self._last.get(node) is summary:
                continue
            self._last[node] = summary
            todo.append((str(node), summary))
        observe_many(self.baselines, todo)
        readings = self.baselines.readings
        self.table.set_readings((int(d), readings.get(d)) for d, _ in todo)

    def reading(self, node: int) -> Reading | None:
        return self.baselines.reading(str(node))

    def fleet_difference(self) -> tuple[float, float]:
        """Median and robust spread (1.4826 × MAD) of the nodes' ``difference`` (0, 0: none)."""
        d = np.asarray([r.difference for r in self.baselines.readings.values()])
        if not d.size:
            return 0.0, 0.0
        median = float(np.median(d))
        return median, float(1.4826 * np.median(np.abs(d - median)))

    def effect(self, node: int, fleet: tuple[float, float] | None = None) -> float | None:
        """The node's change; before it has one, its excess difference over the fleet's
        median when that is an outlier (``outlier_z`` robust deviations), else 0."""
        r = self.reading(node)
        if r is None:
            return None
        if r.change is not None:
            return r.change
        median, spread = self.fleet_difference() if fleet is None else fleet
        excess = r.difference - median
        return excess if excess > self.config.outlier_z * spread else 0.0

    def raw_score(self, node: int, fleet: tuple[float, float] | None = None) -> float | None:
        """``min(1, effect / full_effect)``, before the loss gate."""
        e = self.effect(node, fleet)
        return None if e is None else min(1.0, e / self.config.full_effect)

    def score(self, node: int, fleet: tuple[float, float] | None = None,
              reference_loss: float | None = None, raw: float | bool | None = False
              ) -> float | None:
        """The steering score in ``[0, 1]``: :meth:`raw_score`, 0 for a drifted node whose
        first-epoch loss since it drifted is at most ``reference_loss`` (module notes).
        ``raw``: the node's :meth:`raw_score` when already computed (``False``: not)."""
        s = self.raw_score(node, fleet) if raw is False else raw
        if s is None or s < self.config.threshold or reference_loss is None:
            return s
        since = self.drifted_since.get(node)
        fit = self.losses.get(node)
        if since is not None and fit is not None and fit[0] >= since and fit[1] <= reference_loss:
            return 0.0
        return s

    def raw_scores(self, fleet: tuple[float, float]) -> dict[int, float | None]:
        """:meth:`raw_score` of every node with a reading."""
        return {int(d): self.raw_score(int(d), fleet) for d in self.baselines.readings}

    def start_round(self, server_round: int, fleet: tuple[float, float],
                    raw: Mapping[int, float | None] | None = None) -> float | None:
        """Note which nodes drifted since when; return the clean nodes' median loss
        (``raw``: :meth:`raw_scores`, when already computed)."""
        self.round = server_round
        raw = self.raw_scores(fleet) if raw is None else raw
        clean = []
        for n, s in raw.items():
            if s is not None and s >= self.config.threshold:
                self.drifted_since.setdefault(n, server_round)
            else:
                self.drifted_since.pop(n, None)
                fit = self.losses.get(n)
                if fit is not None and server_round - fit[0] <= self.config.loss_rounds:
                    clean.append(fit[1])
        return float(np.median(clean)) if clean else None

    def round_scores(self, server_round: int, nodes: Sequence[int],
                     summaries: Sequence[AnySummary | None]) -> np.ndarray:
        """Take the nodes' summaries (``nodes`` sorted), start the round (:meth:`start_round`)
        and return each node's :meth:`score` (``nan``: no reading), computed for the whole
        fleet at once from :attr:`table`; the fleet median comes after every summary is in,
        so no score depends on the order the replies arrived in."""
        self.observe_many(zip(nodes, summaries, strict=True))
        t, size, cfg = self.table, len(self.table), self.config
        slots = np.flatnonzero(t.present[:size])
        diff = t.difference[slots]
        median = float(np.median(diff)) if slots.size else 0.0
        spread = float(1.4826 * np.median(np.abs(diff - median))) if slots.size else 0.0
        excess = diff - median
        effect = np.where(t.has_change[slots], t.change[slots],
                          np.where(excess > cfg.outlier_z * spread, excess, 0.0))
        ratio = effect / cfg.full_effect
        raw = np.where(ratio < 1.0, ratio, 1.0)  # min(1, ratio), as raw_score
        drifted = raw >= cfg.threshold
        loss = self._start(server_round, slots, drifted)
        if loss is not None and drifted.any():
            d = slots[drifted]
            since = np.fromiter((self.drifted_since[n] for n in t.ids[d].tolist()), np.int64,
                                d.size)
            fit = (t.loss_round[d] != NEVER) & (t.loss_round[d] >= since) & (t.loss[d] <= loss)
            raw[np.flatnonzero(drifted)[fit]] = 0.0
        scores = np.full(size + 1, np.nan)  # the last one: nodes never seen
        scores[slots] = raw
        return scores[t.slots_of(nodes)]

    def _start(self, server_round: int, slots: np.ndarray, drifted: np.ndarray) -> float | None:
        """:meth:`start_round` on the drifted mask of the nodes with a reading (``slots``)."""
        self.round = server_round
        t = self.table
        old = self.drifted_since
        present = t.present
        new = {n: r for n, r in old.items() if not (n in t.slot and present[t.slot[n]])}
        for n in t.ids[slots[drifted]].tolist():
            new[n] = old.get(n, server_round)
        self.drifted_since = new
        clean = slots[~drifted]
        lr = t.loss_round[clean]
        losses = t.loss[clean][server_round - lr <= self.config.loss_rounds]
        return float(np.median(losses)) if losses.size else None


def first_epoch_losses(replies: Mapping[int, Message], nodes: Iterable[int]) -> dict[int, float]:
    """The ``first-epoch-loss`` metric of the train replies of ``nodes`` that report it."""
    out = {}
    for n in nodes:
        for rec in replies[n].content.values():
            if not isinstance(rec, MetricRecord):
                continue
            v = rec.get(fk.FIRST_EPOCH_LOSS)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[n] = float(v)
    return out
