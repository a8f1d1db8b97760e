"""The connected nodes as one round sees them, kept in arrays rather than one object per node.

A :class:`Roster` holds, per connected node (in node-id order), whether it is a candidate, its
declared examples, its drift score and summary. The round loop builds it from the answer book
(:meth:`aggregation.answer_book.AnswerBook.roster`) or from a query of every node, re-scores
it for the whole fleet at once (:meth:`aggregation.selection.tracking.DriftTracker.round_scores`)
and builds :class:`~aggregation.messages.QueryAnswer` objects only for the nodes it selects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from aggregation.messages import QueryAnswer
from aggregation.selection.base import Candidate
from edgefleet.drift.baseline import AnySummary


@dataclass
class Roster:
    """Connected nodes (``nodes``, sorted) and what the round knows of each.

    ``scores`` holds ``nan`` for a node without a drift score; ``reasons`` the reason of
    every node that is not ``eligible``.
    """

    nodes: np.ndarray
    eligible: np.ndarray
    examples: np.ndarray
    scores: np.ndarray
    drift: list[AnySummary | None]
    reasons: dict[int, str]

    @classmethod
    def of(cls, answers: Mapping[int, QueryAnswer]) -> Roster:
        """The roster of query answers (one per node)."""
        items = sorted(answers.items())
        return cls(
            np.fromiter((n for n, _ in items), np.uint64, len(items)),
            np.fromiter((a.eligible for _, a in items), bool, len(items)),
            np.fromiter((a.num_examples for _, a in items), np.int64, len(items)),
            np.fromiter((np.nan if a.drift_score is None else a.drift_score for _, a in items),
                        np.float64, len(items)),
            [a.drift for _, a in items],
            {n: a.reason for n, a in items if not a.eligible})

    def eligible_ids(self) -> list[int]:
        return [int(n) for n in self.nodes[self.eligible].tolist()]

    def candidates(self, cache: dict[int, Candidate]) -> list[Candidate]:
        """The eligible nodes as selection candidates, in node order; ``cache`` keeps each
        node's last :class:`Candidate` so that an unchanged one is not built again."""
        m = self.eligible
        out = []
        for n, e, s in zip(self.nodes[m].tolist(), self.examples[m].tolist(),
                           self.scores[m].tolist(), strict=True):
            score = None if s != s else s
            c = cache.get(n)
            if c is None or c.num_examples != e or c.drift_score != score:
                c = cache[n] = Candidate(n, e, score)
            out.append(c)
        return out

    def answers(self, nodes: Iterable[int]) -> dict[int, QueryAnswer]:
        """The answers of ``nodes`` (connected ones), by node."""
        pos = np.searchsorted(self.nodes, np.fromiter(nodes, np.uint64))
        out = {}
        for i in pos.tolist():
            n = int(self.nodes[i])
            s = float(self.scores[i])
            out[n] = QueryAnswer(n, bool(self.eligible[i]), self.reasons.get(n, ""),
                                 int(self.examples[i]), self.drift[i], None if s != s else s)
        return out
