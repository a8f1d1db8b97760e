"""What the round loop knows about each node between rounds, so it need not ask every round.

A query step that asks every connected node for its eligibility and drift summary sends one
message more per node and round, about as many as the train step itself. With
``RoundSettings.query_max_age = K > 0`` the round loop keeps each node's last answer in an
:class:`AnswerBook`, and the train step refreshes it for free:

* a node that sent an update was eligible, and its train reply carries its current drift
  summary (``drift-packed`` in its ``ConfigRecord``, as :mod:`edge_client.flower_client` sends
  it; the JSON ``drift`` is read when there is none): its answer is renewed with that summary.
  The packed summaries of a round's replies are decoded and validated together
  (:func:`edgefleet.drift.packed.unpack_many`); a malformed one counts as no summary. A reply
  without a (valid) summary renews the eligibility but not the answer's age when the node had
  sent a summary before, so its drift is asked again once that summary is ``K`` rounds old;
* a node that declined is recorded ineligible, with its reason, until ``K`` rounds later;
* the examples a node declares (what bounds its reported ``num-examples``) are its query
  reply's count, or, for a node never queried, the count of its first accepted update
  (:meth:`AnswerBook.learn_examples`).

**No bootstrap query.** A node without a fresh answer (never seen, or its answer is older than
``K`` rounds) is a candidate all the same, presumed eligible with what the book last knew of it
(:meth:`AnswerBook.presumed`): round 1 trains an over-selected sample directly and learns
eligibility and drift from the train replies, as production over-selection already handles a
node that became ineligible (it declines its train message). The nodes of stale answers that
were *not* selected are queried, oldest answer first, at most a budget proportional to the
round's train messages (``RoundSettings.query_share``, :meth:`AnswerBook.stale`), so no round
pays for a query of the whole fleet and nodes the selection passes over still get their drift
read. Drift scores of JSON summaries are cached by the summary's text; a node's packed summary
identical to its previous one reuses the decoded object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, Message

from aggregation.messages import QueryAnswer, records_of
from aggregation.selection import DriftScorer
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.baseline import AnySummary
from edgefleet.drift.packed import PackedSummary, unpack_many
from edgefleet.errors import SummaryError

_MAX_CACHED = 4096
Drift = tuple[AnySummary | None, float | None]


class AnswerBook:
    """Nodes' latest answers with the round they date from (see the module notes)."""

    def __init__(self, max_age: int, scorer: DriftScorer | None,
                 reference: ReferenceProfile | None = None) -> None:
        self.max_age = max_age
        self.scorer = scorer
        self.reference = reference if reference is not None and reference.features else None
        self._answers: dict[int, tuple[int, QueryAnswer]] = {}
        self._scores: dict[str | bytes, tuple[DriftSummary | None, float | None]] = {}
        self._packed: dict[int, tuple[PackedSummary, float | None]] = {}

    # --- which answers are usable --------------------------------------------------------------
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

    def presumed(self, node: int) -> QueryAnswer:
        """A node without a fresh answer, as a candidate: eligible, with its last known
        examples, summary and score (none for a node never seen)."""
        entry = self._answers.get(node)
        if entry is None:
            return QueryAnswer(node, True)
        a = entry[1]
        return QueryAnswer(node, True, "", a.num_examples, a.drift, a.drift_score)

    def stale(self, server_round: int, nodes: Iterable[int], budget: int) -> list[int]:
        """Up to ``budget`` of ``nodes`` whose answer is older than ``max_age`` rounds (or who
        never answered), oldest answer first (never answered first), then by node id."""
        if budget <= 0:
            return []
        aged = []
        for n in nodes:
            entry = self._answers.get(n)
            since = -1 if entry is None else entry[0]
            if entry is None or server_round - since > self.max_age:
                aged.append((since, n))
        return [n for _, n in sorted(aged)[:budget]]

    def record(self, server_round: int, answers: Mapping[int, QueryAnswer]) -> None:
        if self.max_age > 0:
            for n, a in answers.items():
                self._answers[n] = (server_round, a)

    def learn_examples(self, counts: Mapping[int, int]) -> None:
        """Declared examples of answers that have none yet (nodes never queried), from their
        accepted updates."""
        for n, count in counts.items():
            entry = self._answers.get(n)
            if entry is not None and entry[1].num_examples <= 0 < count:
                a = entry[1]
                self._answers[n] = (entry[0], QueryAnswer(n, a.eligible, a.reason, count,
                                                          a.drift, a.drift_score))

    # --- drift summaries -----------------------------------------------------------------------
    def drift(self, raw: object) -> tuple[DriftSummary | None, float | None]:
        """A summary's JSON text -> (summary, score), parsed and scored once per distinct text."""
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

    def drift_of(self, replies: Mapping[int, ConfigRecord | None]) -> dict[int, Drift]:
        """Each node's (summary, score) from its reply's config: the packed summary (decoded
        for all nodes at once), else the JSON one; ``(None, None)`` when neither is valid."""
        out: dict[int, Drift] = {}
        todo: dict[int, bytes] = {}
        for n, cfg in replies.items():
            packed = cfg.get(fk.DRIFT_PACKED) if cfg is not None else None
            if isinstance(packed, bytes) and packed and self.reference is not None:
                last = self._packed.get(n)
                if last is not None and last[0].blob == packed:
                    out[n] = last
                else:
                    todo[n] = packed
            else:
                out[n] = self.drift(cfg.get(fk.DRIFT) if cfg is not None else None)
        if todo and self.reference is not None:
            decoded = unpack_many(list(todo.values()), self.reference)
            for n, summary in zip(todo, decoded, strict=True):
                if isinstance(summary, str):  # refused: as if the reply carried no summary
                    out[n] = (None, None)
                    continue
                score = self.scorer.score(summary.to_summary()) if self.scorer else None
                out[n] = self._packed[n] = (summary, score)
        return out

    def after_train(self, server_round: int, asked: Mapping[int, QueryAnswer],
                    updates: Mapping[int, Message], declined: Mapping[int, str]) -> None:
        """Renew the answers of the nodes that trained or declined in ``server_round``."""
        if self.max_age <= 0:
            return
        configs = {n: next(iter(records_of(m.content, ConfigRecord)), None)
                   for n, m in updates.items()}
        drift = self.drift_of(configs)
        for n in updates:
            prev = asked[n]
            summary, score = drift[n]
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
