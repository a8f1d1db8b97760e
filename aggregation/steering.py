"""Drift steers the round: more local training and a higher aggregation weight for drifted nodes.

Both effects are bounded so that a node cannot buy itself influence by reporting drift:

* **training config** — a node with drift score ``s`` in ``[0, 1]`` trains
  ``base_epochs + round(s * max_extra_epochs)`` local epochs;
* **aggregation weight** — ``num_examples * (1 + min(drift_boost * s, max_drift_boost))``,
  normalised to sum to 1 over the round's accepted updates. It is written into each update's
  ``MetricRecord`` under ``agg-weight`` (:data:`edgefleet.flower_keys.AGG_WEIGHT`), and the
  Flower strategy is built with that key as ``weighted_by_key``, so Flower's own weighted
  averaging applies it.

The drift score comes from the node's *query* reply (before it trained), not from its train reply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, MetricRecord, RecordDict

from aggregation.errors import SettingsError
from aggregation.selection.base import Candidate
from aggregation.selection.drift import DEFAULT_THRESHOLD
from aggregation.selection.tracking import TrackerConfig
from edgefleet import flower_keys as fk
from edgefleet.run_settings import DEFAULTS

DEFAULT_TRACKING = TrackerConfig()


@dataclass(frozen=True)
class SteeringConfig:
    """How drift changes the training config and the aggregation weight (the defaults of the
    run settings' knobs of the same names, :data:`edgefleet.run_settings.DEFAULTS`).

    Parameters
    ----------
    base_epochs : int (default: 1)
        Local epochs of a node without drift.
    max_extra_epochs : int (default: 6)
        Extra local epochs at drift score 1 (scaled linearly, rounded).
    lr : float (default: 0.05)
        Local learning rate sent to every node.
    drift_boost : float (default: 1.0)
        Weight multiplier slope: the boost is ``drift_boost * score`` ...
    max_drift_boost : float (default: 0.5)
        ... capped at this, so a weight is at most ``(1 + max_drift_boost) * num_examples``.
    missing_score : float (default: 0.0)
        The score of a node that reported no drift summary.
    min_score : float (default: 0.5)
        Below this score a node gets neither extra epochs nor a boost: the drift policy's
        threshold, so steering acts on the nodes it counts as drifted and not on the noise of
        a clean node's windows (which can score 0.1–0.3).
    tracking : TrackerConfig or None (default: TrackerConfig())
        How scores are measured: change of each node's recent windows against its own
        baseline (:mod:`aggregation.selection.tracking`); ``None`` keeps the plan-reference
        score of :class:`~aggregation.selection.drift.DriftScorer`.
    """

    base_epochs: int = DEFAULTS.base_epochs
    max_extra_epochs: int = DEFAULTS.max_extra_epochs
    lr: float = DEFAULTS.lr
    drift_boost: float = DEFAULTS.drift_boost
    max_drift_boost: float = DEFAULTS.max_drift_boost
    missing_score: float = 0.0
    tracking: TrackerConfig | None = DEFAULT_TRACKING
    min_score: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.base_epochs < 1 or self.max_extra_epochs < 0:
            raise SettingsError("base_epochs must be >= 1 and max_extra_epochs >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SettingsError(f"lr must be a positive number, got {self.lr}")
        if self.drift_boost < 0 or self.max_drift_boost < 0:
            raise SettingsError("drift_boost and max_drift_boost must be >= 0")
        if not 0.0 <= self.missing_score <= 1.0 or not 0.0 <= self.min_score <= 1.0:
            raise SettingsError("missing_score and min_score must be in [0, 1]")

    def score(self, drift_score: float | None) -> float:
        """The drift score used for steering: clipped to ``[0, 1]``, missing -> default."""
        if drift_score is None or not math.isfinite(drift_score):
            return self.missing_score
        return min(1.0, max(0.0, float(drift_score)))

    def acting(self, drift_score: float | None) -> float:
        """The score steering acts on: :meth:`score`, or 0 below ``min_score``."""
        s = self.score(drift_score)
        return s if s >= self.min_score else 0.0

    def local_epochs(self, drift_score: float | None) -> int:
        """``base_epochs + round(acting score * max_extra_epochs)``."""
        return self.base_epochs + round(self.acting(drift_score) * self.max_extra_epochs)

    def boost(self, drift_score: float | None) -> float:
        """``min(drift_boost * acting score, max_drift_boost)``."""
        return min(self.drift_boost * self.acting(drift_score), self.max_drift_boost)


def node_train_config(candidate: Candidate, cfg: SteeringConfig) -> dict[str, int | float]:
    """The per-node part of a train message's ConfigRecord."""
    return {
        fk.EPOCHS: cfg.local_epochs(candidate.drift_score),
        fk.LR: cfg.lr,
        fk.DRIFT_SCORE: cfg.score(candidate.drift_score),
    }


def aggregation_weights(
    num_examples: Mapping[int, int],
    drift_scores: Mapping[int, float | None],
    cfg: SteeringConfig,
) -> dict[int, float]:
    """Normalised aggregation weights ``num_examples * (1 + boost)`` per node id (sum 1)."""
    raw = {
        node: n * (1.0 + cfg.boost(drift_scores.get(node))) for node, n in num_examples.items()
    }
    total = sum(raw.values())
    if total <= 0:
        raise SettingsError("aggregation weights need at least one node with examples")
    return {node: w / total for node, w in raw.items()}


def strategy_contents(
    contents: Sequence[RecordDict], weights: Sequence[float]
) -> list[RecordDict]:
    """Rebuild validated replies into the exact shape Flower's strategies expect.

    Each result holds the reply's (already validated) ``ArrayRecord`` under ``"arrays"`` and a
    fresh ``MetricRecord`` under ``"metrics"`` with ``agg-weight``, ``num-examples`` and
    the numeric scalar metrics *every* reply reported, so that Flower's consistency checks pass
    even when nodes report different extra metrics. Config records are dropped.
    """
    if len(contents) != len(weights):
        raise ValueError("one weight per content")
    metric_records = [next(iter(c.metric_records.values())) for c in contents]
    common = set.intersection(*(set(m.keys()) for m in metric_records)) if contents else set()
    keys = sorted(
        k
        for k in common - {fk.AGG_WEIGHT}
        if all(_is_scalar(m[k]) for m in metric_records)
    )
    out = []
    for content, metrics, weight in zip(contents, metric_records, weights, strict=True):
        arrays: ArrayRecord = next(iter(content.array_records.values()))
        record = MetricRecord({k: metrics[k] for k in keys})
        record[fk.AGG_WEIGHT] = float(weight)
        out.append(RecordDict({fk.ARRAYS: arrays, fk.METRICS: record}))
    return out


def _is_scalar(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


__all__ = [
    "SteeringConfig",
    "aggregation_weights",
    "node_train_config",
    "strategy_contents",
]
