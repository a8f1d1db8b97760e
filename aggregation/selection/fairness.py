"""A fairness bound that wraps any selection policy.

Without a bound, a drift-prioritised policy keeps picking the same drifted nodes, which drains
their batteries and lets a few devices dominate the global model. :class:`FairnessBound` removes
from the candidates every node that was picked ``max_picks`` times in the last ``window`` rounds,
or picked within the last ``cooldown`` rounds, then lets the wrapped policy choose among the rest.

The bound is strict: when it leaves fewer than ``k`` candidates, fewer nodes are selected (and the
round may then fail its minimum of reports) rather than a node being picked too often.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from aggregation.errors import SettingsError
from aggregation.selection.base import Candidate, SelectionPolicy
from edgefleet.run_settings import DEFAULTS


class FairnessBound:
    """Bound how often any node is selected; composes with any :class:`SelectionPolicy`.

    Parameters
    ----------
    policy : SelectionPolicy
        The policy that chooses among the nodes the bound allows (uniform, drift-prioritised...).
    max_picks : int (default: 3)
        A node is picked in at most this many of any ``window`` consecutive rounds.
    window : int (default: 5)
        The length, in rounds, of the sliding window ``max_picks`` applies to.
    cooldown : int (default: 0)
        After being picked in round ``r``, a node is not picked again before round
        ``r + cooldown + 1``. ``0`` disables the cooldown.

    Notes
    -----
    The memory is the set of nodes picked per round, kept for the last
    ``max(window, cooldown + 1)`` rounds. Selecting the same round again (a retried round)
    replaces that round's picks. The memory lives in the process: a resumed run starts afresh.
    """

    def __init__(
        self, policy: SelectionPolicy, max_picks: int = 3, window: int = DEFAULTS.fair_window,
        cooldown: int = DEFAULTS.fair_cooldown,
    ) -> None:
        if window < 1:
            raise SettingsError(f"window must be >= 1, got {window}")
        if not 1 <= max_picks <= window:
            raise SettingsError(f"max_picks must be in [1, window={window}], got {max_picks}")
        if cooldown < 0:
            raise SettingsError(f"cooldown must be >= 0, got {cooldown}")
        self.policy = policy
        self.max_picks = max_picks
        self.window = window
        self.cooldown = cooldown
        self._history: dict[int, frozenset[int]] = {}

    @property
    def name(self) -> str:
        return f"fair({getattr(self.policy, 'name', type(self.policy).__name__)})"

    def allowed(self, node_id: int, server_round: int) -> bool:
        """Whether ``node_id`` may be picked in ``server_round`` given the past picks."""
        picks = 0
        for r, nodes in self._history.items():
            if r >= server_round or node_id not in nodes:
                continue
            if r > server_round - self.window:
                picks += 1
            if r >= server_round - self.cooldown:
                return False
        return picks < self.max_picks

    def select(
        self,
        candidates: Sequence[Candidate],
        k: int,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Filter the candidates by the bound, delegate to the wrapped policy, remember picks."""
        blocked = self.blocked(server_round)
        allowed = [c for c in candidates if c.node_id not in blocked]
        picked = self.policy.select(allowed, k, server_round, rng) if allowed else []
        self._remember(server_round, picked)
        return picked

    def blocked(self, server_round: int) -> set[int]:
        """The nodes that may not be picked in ``server_round`` (not :meth:`allowed`), from the
        remembered picks alone, whatever the number of candidates."""
        picks: Counter[int] = Counter()
        out: set[int] = set()
        for r, nodes in self._history.items():
            if r >= server_round:
                continue
            if r > server_round - self.window:
                picks.update(nodes)
            if r >= server_round - self.cooldown:
                out |= nodes
        out.update(n for n, c in picks.items() if c >= self.max_picks)
        return out

    def picks_in_window(self, node_id: int, last_round: int) -> int:
        """How many of the rounds ``(last_round - window, last_round]`` picked ``node_id``."""
        return sum(
            1
            for r, nodes in self._history.items()
            if last_round - self.window < r <= last_round and node_id in nodes
        )

    def _remember(self, server_round: int, picked: list[int]) -> None:
        self._history[server_round] = frozenset(picked)
        keep = max(self.window, self.cooldown + 1)
        for r in [r for r in self._history if r <= server_round - keep]:
            del self._history[r]

    def __repr__(self) -> str:
        return (
            f"FairnessBound({self.policy!r}, max_picks={self.max_picks}, "
            f"window={self.window}, cooldown={self.cooldown})"
        )
