"""What every selection policy shares: the candidate, the policy protocol, over-selection.

A round's query step turns each eligible node's reply into a :class:`Candidate`; a
:class:`SelectionPolicy` picks ``k`` of them, where ``k`` is the round's target number of reports
times the over-selection factor (:func:`over_selection_count`), so that the round still reaches its
target when some selected nodes drop out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from aggregation.errors import SettingsError
from edgefleet.run_settings import DEFAULTS

DEFAULT_OVER_SELECTION = DEFAULTS.over_selection


@dataclass(frozen=True)
class Candidate:
    """An eligible node, as its query reply described it.

    Parameters
    ----------
    node_id : int
        The Flower node id.
    num_examples : int (default: 0)
        Local training examples the node declared.
    drift_score : float or None (default: None)
        How far the node's data moved from the plan's reference, in ``[0, 1]``
        (see :class:`aggregation.selection.drift.DriftScorer`); ``None`` when it sent no summary.
    """

    node_id: int
    num_examples: int = 0
    drift_score: float | None = None


@runtime_checkable
class SelectionPolicy(Protocol):
    """Picks the nodes of one round among the eligible candidates."""

    def select(
        self,
        candidates: Sequence[Candidate],
        k: int,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Return at most ``k`` distinct node ids drawn from ``candidates``.

        Parameters
        ----------
        candidates : Sequence[Candidate]
            The eligible nodes (distinct node ids).
        k : int
            How many to pick; fewer are returned when fewer are allowed.
        server_round : int
            The round being configured (policies with memory key on it).
        rng : numpy.random.Generator
            The source of randomness (seeded by the caller for reproducible runs).
        """
        ...


def over_selection_count(target: int, factor: float = DEFAULT_OVER_SELECTION) -> int:
    """How many nodes to select so that ``target`` reports survive drop-outs.

    ``ceil(factor * target)``, robust to floating-point noise (``1.3 * 10`` is 13, not 14).

    Parameters
    ----------
    target : int
        The number of reports the round wants.
    factor : float (default: 1.3)
        Over-selection factor, at least 1.
    """
    if target < 1:
        raise SettingsError(f"target must be >= 1, got {target}")
    if not factor >= 1.0:
        raise SettingsError(f"over-selection factor must be >= 1, got {factor}")
    return max(target, math.ceil(round(factor * target, 9)))


def by_node(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates sorted by node id: a seeded draw then picks the same nodes whatever
    order the replies arrived in."""
    return sorted(candidates, key=lambda c: c.node_id)


def check_k(candidates: Sequence[Candidate], k: int) -> int:
    """Validate ``k`` and the candidates' ids; return how many can actually be picked."""
    if k < 0:
        raise SettingsError(f"k must be >= 0, got {k}")
    ids = [c.node_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise SettingsError("candidates must have distinct node ids")
    return min(k, len(ids))


def weighted_sample(
    candidates: Sequence[Candidate], weights: np.ndarray, k: int, rng: np.random.Generator
) -> list[int]:
    """Draw ``k`` distinct node ids with probabilities proportional to ``weights`` (> 0)."""
    n = check_k(candidates, k)
    if n == 0:
        return []
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (len(candidates),) or not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise SettingsError("selection weights must be finite and > 0, one per candidate")
    idx = rng.choice(len(candidates), size=n, replace=False, p=p / p.sum())
    return [candidates[int(i)].node_id for i in idx]
