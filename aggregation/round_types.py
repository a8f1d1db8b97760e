"""What a round runs on and what it returns: the grid protocol, the round settings, outcomes.

:class:`RoundSettings` holds the round knobs of :class:`edgefleet.run_settings.RunKnobs`;
:class:`RoundOutcome` and :class:`RunResult` are what :class:`aggregation.rounds.RoundRunner`
returns. All are re-exported by :mod:`aggregation.rounds`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import Message

from aggregation.errors import SettingsError
from aggregation.report import RoundReport
from aggregation.selection import over_selection_count
from edgefleet.drift import DriftSummary
from edgefleet.drift.baseline import AnySummary
from edgefleet.drift.packed import merge_summaries
from edgefleet.errors import SummaryError
from edgefleet.run_settings import DEFAULTS

Weights = dict[str, np.ndarray]


class GridLike(Protocol):
    """The part of :class:`flwr.serverapp.Grid` the round loop uses."""

    def get_node_ids(self) -> Iterable[int]: ...

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...


@dataclass(frozen=True)
class RoundSettings:
    """How a round runs: the round knobs of :class:`edgefleet.run_settings.RunKnobs`, which
    documents each one; the defaults are its :data:`~edgefleet.run_settings.DEFAULTS`.

    Parameters
    ----------
    model : str (default: "model")
        Model name, sent in query and train configs.
    target_clients, min_reports, over_selection, min_nodes : int, int, float, int
        Round size; ``min_nodes`` 0 means ``min_reports`` (it is resolved on construction).
    wait_for_nodes_s, query_timeout_s, train_timeout_s, eval_timeout_s, poll_interval_s : float
        Deadlines and the pause between two pulls, in seconds.
    eval_clients : int
        Eligible nodes asked to evaluate the new global model after the round; 0 disables.
    seed : int
        Seed of the selection randomness (rounds draw ``seed + round``).
    batch_rule, weighting : str
        The devices' training semantics, sent in every train config.
    query_max_age : int
        0: query every node every round. ``K > 0``: no query before selection; a node whose
        last answer (query reply, or train reply) is more than ``K`` rounds old, or who never
        answered, is a candidate presumed eligible (see :mod:`aggregation.answer_book`).
    query_share : float (default: 0.1)
        With ``query_max_age > 0``: the stale nodes the selection passed over that are queried
        in a round, at most ``ceil(query_share * selected)``, oldest answer first.
    """

    model: str = "model"
    target_clients: int = DEFAULTS.target_clients
    min_reports: int = DEFAULTS.min_reports
    over_selection: float = DEFAULTS.over_selection
    min_nodes: int = DEFAULTS.min_nodes
    wait_for_nodes_s: float = DEFAULTS.wait_for_nodes_s
    query_timeout_s: float = DEFAULTS.query_timeout_s
    train_timeout_s: float = DEFAULTS.train_timeout_s
    eval_clients: int = DEFAULTS.eval_clients
    eval_timeout_s: float = DEFAULTS.eval_timeout_s
    poll_interval_s: float = DEFAULTS.poll_interval_s
    seed: int = DEFAULTS.seed
    batch_rule: str = DEFAULTS.batch_rule
    weighting: str = DEFAULTS.weighting
    query_max_age: int = DEFAULTS.query_max_age
    query_share: float = DEFAULTS.query_share

    def __post_init__(self) -> None:
        if not 1 <= self.min_reports <= self.target_clients:
            raise SettingsError("need 1 <= min_reports <= target_clients")
        if self.min_nodes == 0:
            object.__setattr__(self, "min_nodes", self.min_reports)
        over_selection_count(self.target_clients, self.over_selection)
        times = (self.wait_for_nodes_s, self.query_timeout_s, self.train_timeout_s,
                 self.eval_timeout_s, self.poll_interval_s)
        if min(times) < 0 or self.query_timeout_s <= 0 or self.train_timeout_s <= 0:
            raise SettingsError("timeouts must be >= 0, query and train timeouts > 0")
        if not 0.0 <= self.query_share <= 1.0:
            raise SettingsError("query_share must be in [0, 1]")


@dataclass
class RoundOutcome:
    """A finished round: its report, the global weights after it, and its drift.

    ``drift`` is the merged drift summary of the round's accepted nodes (``drift_parts``),
    merged when first read (publishing reads it; a simulation need not).
    """

    report: RoundReport
    weights: Weights
    drift_scores: dict[int, float | None] = field(default_factory=dict)
    drift_parts: list[AnySummary | None] = field(default_factory=list, repr=False)
    _drift: list[DriftSummary | None] = field(default_factory=list, init=False, repr=False)

    @property
    def drift(self) -> DriftSummary | None:
        if not self._drift:
            self._drift.append(_merge(self.drift_parts))
        return self._drift[0]


@dataclass
class RunResult:
    """All rounds of one :meth:`RoundRunner.run`."""

    weights: Weights
    outcomes: list[RoundOutcome]

    @property
    def reports(self) -> list[RoundReport]:
        return [o.report for o in self.outcomes]


def _merge(summaries: list[AnySummary | None]) -> DriftSummary | None:
    """The merged drift summary of the round's accepted nodes (``None`` if none or unmergeable)."""
    present = [s for s in summaries if s is not None]
    if not present:
        return None
    try:
        return merge_summaries(present)
    except SummaryError:
        return None
