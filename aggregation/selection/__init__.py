"""Selection policies: which eligible nodes train in a round.

``uniform``  every eligible node equally likely (:class:`UniformSelection`);
``drift``    more likely the more the node drifted (:class:`DriftPrioritisedSelection`);
``fair(...)`` a bound on how often a node is picked, around either (:class:`FairnessBound`).

:func:`make_policy` builds one by name, as the run config names it.
"""

from __future__ import annotations

from aggregation.errors import SettingsError
from aggregation.selection.base import (
    DEFAULT_OVER_SELECTION,
    Candidate,
    SelectionPolicy,
    over_selection_count,
)
from aggregation.selection.drift import (
    DEFAULT_SHARE,
    DEFAULT_THRESHOLD,
    DriftPrioritisedSelection,
    DriftScorer,
)
from aggregation.selection.fairness import FairnessBound
from aggregation.selection.uniform import UniformSelection
from edgefleet.run_settings import DEFAULTS

POLICIES = ("uniform", "drift")


def make_policy(
    name: str,
    *,
    fair_max_picks: int | None = None,
    fair_window: int = DEFAULTS.fair_window,
    fair_cooldown: int = DEFAULTS.fair_cooldown,
    drift_floor: float = DEFAULTS.drift_floor,
    drift_share: float | None = DEFAULT_SHARE,
    drift_threshold: float = DEFAULT_THRESHOLD,
) -> SelectionPolicy:
    """Build a policy by name; a ``fair_max_picks`` wraps it in a :class:`FairnessBound`.

    Parameters
    ----------
    name : {"uniform", "drift"}
        The base policy.
    fair_max_picks : int or None (default: None)
        When set, no node is picked in more than this many of any ``fair_window`` rounds.
    fair_window : int (default: 5)
        Window of the fairness bound, in rounds.
    fair_cooldown : int (default: 0)
        Rounds a node sits out after being picked.
    drift_floor, drift_share, drift_threshold : float, float or None, float (default: 0.1,
        0.5, 0.2)
        ``floor``, ``share`` and ``threshold`` of :class:`DriftPrioritisedSelection`.
    """
    base: SelectionPolicy
    if name == "uniform":
        base = UniformSelection()
    elif name == "drift":
        base = DriftPrioritisedSelection(floor=drift_floor, share=drift_share,
                                         threshold=drift_threshold)
    else:
        raise SettingsError(f"unknown selection policy {name!r}; choose from {POLICIES}")
    if fair_max_picks is None and fair_cooldown == 0:
        return base
    max_picks = fair_window if fair_max_picks is None else fair_max_picks
    return FairnessBound(base, max_picks=max_picks, window=fair_window, cooldown=fair_cooldown)


__all__ = [
    "DEFAULT_OVER_SELECTION",
    "Candidate",
    "DriftPrioritisedSelection",
    "DriftScorer",
    "FairnessBound",
    "SelectionPolicy",
    "UniformSelection",
    "make_policy",
    "over_selection_count",
]
