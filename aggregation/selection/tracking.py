"""Each node's steering score: the *change* of its recent inputs against its own baseline.

Scoring a node against the plan's reference (:class:`~aggregation.selection.drift.DriftScorer`)
measures how different its data is, and in a non-IID fleet every node differs: with
Dirichlet(0.5) label shares the clean nodes of the harness's digits fleet score 0.17–0.49 on the
effect scale against the reference from their label mix alone, and 0.00–0.04 against their own
earlier windows (``README.md``, drift steering). :class:`DriftTracker` keeps every node's
baseline and recent windows (:class:`edgefleet.drift.baseline.Baselines`: the node's first
``baseline_rows`` rows on a version, its newest ``min_rows``) and scores

* ``change``: :func:`edgefleet.drift.effect.moment_shift` of recent against the baseline (an
  effect size that grows with the shift, robust to near-constant features, without
  sample-size bias), once the baseline is complete;
* before that, the node's ``difference`` against the reference in excess of the fleet's median
  difference (the fleet's standing non-IID level), so that a node first seen already drifted
  is still found.

The score in ``[0, 1]`` is ``min(1, effect / full_effect)``: the drift policy reserves slots for
nodes from ``threshold`` on, steering scales epochs and weights with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np

from aggregation.errors import SettingsError
from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.baseline import BaselineConfig, Baselines, Reading
from edgefleet.errors import SummaryError

DEFAULT_FULL_EFFECT = 0.4


@dataclass(frozen=True)
class TrackerConfig:
    """How node drift is scored (see the module notes).

    Parameters
    ----------
    full_effect : float (default: 0.25)
        Effect size (bias-corrected RMS standardized shift) at which a node's score reaches 1.
        Clean nodes measured against their own baseline stay below 0.05 in the harness; a
        brightness shift of +1 grey level in 16 measures about 0.3, the issue's +8 about 2.4.
    baseline : BaselineConfig (default: BaselineConfig())
        Window sizes: baseline rows, recent rows, labels (``edgefleet.drift.baseline``).
    """

    full_effect: float = DEFAULT_FULL_EFFECT
    baseline: BaselineConfig = BaselineConfig()

    def __post_init__(self) -> None:
        if not self.full_effect > 0:
            raise SettingsError(f"full_effect must be > 0, got {self.full_effect}")


class DriftTracker:
    """Per-node baselines and the steering score (see the module notes)."""

    def __init__(self, reference: ReferenceProfile, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.baselines = Baselines(reference, self.config.baseline)

    def observe(self, node: int, summary: DriftSummary | None) -> None:
        """Take ``node``'s latest summary (``None``, or one of other bins: ignored)."""
        if summary is None:
            return
        try:
            self.baselines.observe(str(node), summary)
        except SummaryError:
            return

    def reading(self, node: int) -> Reading | None:
        return self.baselines.reading(str(node))

    def fleet_difference(self) -> float:
        """The median ``difference`` over the nodes that have a reading (0 when none)."""
        d = [r.difference for r in self.baselines.readings.values()]
        return float(np.median(d)) if d else 0.0

    def effect(self, node: int, fleet_difference: float | None = None) -> float | None:
        """The node's change, or, before its baseline is complete, its excess difference."""
        r = self.reading(node)
        if r is None:
            return None
        if r.change is not None:
            return r.change
        median = self.fleet_difference() if fleet_difference is None else fleet_difference
        return max(0.0, r.difference - median)

    def score(self, node: int, fleet_difference: float | None = None) -> float | None:
        """The steering score in ``[0, 1]``: ``min(1, effect / full_effect)``."""
        e = self.effect(node, fleet_difference)
        return None if e is None else min(1.0, e / self.config.full_effect)


class _Answer(Protocol):
    node_id: int
    drift: DriftSummary | None
    drift_score: float | None


A = TypeVar("A", bound=_Answer)


def rescore(tracker: DriftTracker, answers: Mapping[int, A]) -> dict[int, A]:
    """Feed every answer's summary to ``tracker`` and replace its score by the tracker's.

    ``answers`` are the round loop's query answers (frozen dataclasses with ``drift`` and
    ``drift_score``); nodes are taken in id order and the fleet median is computed once, after
    all of them, so no score depends on the order the replies arrived in.
    """
    for node in sorted(answers):
        tracker.observe(node, answers[node].drift)
    median = tracker.fleet_difference()
    return {n: replace(a, drift_score=tracker.score(n, median)) for n, a in answers.items()}
