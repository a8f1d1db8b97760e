"""What the round loop knows about each node between rounds, so it need not ask every round.

The query step asks every connected node for its eligibility and drift summary: one message
more per node and round, about as many as the train step itself. With
``RoundSettings.query_max_age = K > 0`` the round loop keeps each node's last answer in an
:class:`AnswerBook` and queries only the nodes whose answer is older than ``K`` rounds (or who
never answered). The train step refreshes the book for free:

* a node that sent an update was eligible, and its train reply carries its current drift
  summary (``drift`` in its ``ConfigRecord``, as :mod:`edge_client.flower_client` sends it): its
  answer is renewed with that summary and its declared example count. A reply without a
  summary renews the eligibility but not the answer's age when the node had sent a summary
  before, so its drift is queried again once that summary is ``K`` rounds old;
* a node that declined is recorded ineligible, with its reason, until it is queried again.

A node that became ineligible since its answer declines its train message, which is what it
does anyway when conditions change mid-round.

The bootstrap: round 1 (and the first round a node is connected in) knows no answer, so it
queries every node it does not know; from round 2 on only the nodes that did not train or
decline in the last ``K`` rounds are queried. Drift scores are cached by the summary's text, so
an unchanged summary is parsed and scored once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, Message

from aggregation.messages import QueryAnswer, records_of
from aggregation.selection import DriftScorer
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary
from edgefleet.errors import SummaryError

_MAX_CACHED = 100_000


class AnswerBook:
    """Nodes' latest answers with the round they date from (see the module notes)."""

    def __init__(self, max_age: int, scorer: DriftScorer | None) -> None:
        self.max_age = max_age
        self.scorer = scorer
        self._answers: dict[int, tuple[int, QueryAnswer]] = {}
        self._scores: dict[str | bytes, tuple[DriftSummary | None, float | None]] = {}

    def fresh(self, server_round: int, nodes: Iterable[int]) -> dict[int, QueryAnswer]:
        """The answers of ``nodes`` at most ``max_age`` rounds old (none when ``max_age`` 0)."""
        if self.max_age <= 0:
            return {}
        out = {}
        for n in nodes:
            entry = self._answers.get(n)
            if entry is not None and server_round - entry[0] <= self.max_age:
                out[n] = entry[1]
        return out

    def record(self, server_round: int, answers: Mapping[int, QueryAnswer]) -> None:
        if self.max_age > 0:
            for n, a in answers.items():
                self._answers[n] = (server_round, a)

    def drift(self, raw: object) -> tuple[DriftSummary | None, float | None]:
        """A summary's text -> (summary, score), parsed and scored once per distinct text."""
        if not isinstance(raw, str | bytes) or not raw:
            return None, None
        hit = self._scores.get(raw)
        if hit is None:
            try:
                summary: DriftSummary | None = DriftSummary.parse(raw)
            except SummaryError:
                summary = None
            score = self.scorer.score(summary) if (self.scorer and summary) else None
            if len(self._scores) >= _MAX_CACHED:
                self._scores.clear()
            hit = self._scores[raw] = (summary, score)
        return hit

    def after_train(self, server_round: int, asked: Mapping[int, QueryAnswer],
                    updates: Mapping[int, Message], declined: Mapping[int, str]) -> None:
        """Renew the answers of the nodes that trained or declined in ``server_round``."""
        if self.max_age <= 0:
            return
        for n, msg in updates.items():
            prev = asked[n]
            raw = next((c.get(fk.DRIFT) for c in records_of(msg.content, ConfigRecord)), None)
            summary, score = self.drift(raw)
            since = server_round
            if summary is None:  # no fresh summary: keep the old one, and its age
                summary, score = prev.drift, prev.drift_score
                if summary is not None:
                    since = self._answers.get(n, (server_round, prev))[0]
            self._answers[n] = (since, QueryAnswer(n, True, "", prev.num_examples,
                                                   summary, score))
        for n, why in declined.items():
            before = asked.get(n)
            self._answers[n] = (server_round, QueryAnswer(
                n, False, f"declined in round {server_round}: {why}",
                before.num_examples if before else 0))
