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
  reply's count; a node never queried has declared none, so only the absolute and the
  round-relative bounds limit its count (an update's count is not taken as a declaration: a
  device that trained part of its data once would have every later full update refused).

**No bootstrap query.** A node without a fresh answer (never seen, or its answer is older than
``K`` rounds) is a candidate all the same, presumed eligible with what the book last knew of it
(:meth:`AnswerBook.presumed`): round 1 trains an over-selected sample directly and learns
eligibility and drift from the train replies, as production over-selection already handles a
node that became ineligible (it declines its train message). The nodes of stale answers that
were *not* selected are queried, oldest answer first, at most a budget proportional to the
round's train messages (``RoundSettings.query_share``, :meth:`AnswerBook.stale`), pushed with
the train messages and pulled along with their replies, so no round pays for a query of the
whole fleet and nodes the selection passes over still get their drift read. Drift scores of
JSON summaries are cached by the summary's text; a node's packed summary
identical to its previous one reuses the decoded object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message

from aggregation.messages import QueryAnswer, records_of
from aggregation.roster import Roster
from aggregation.selection import DriftScorer
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.drift.baseline import AnySummary
from edgefleet.drift.packed import PackedSummary, unpack_many
from edgefleet.errors import SummaryError

_MAX_CACHED = 4096
_NEVER = -(2**62)  # the round of a node without an answer
Drift = tuple[AnySummary | None, float | None]


class AnswerBook:
    """Nodes' latest answers with the round they date from (see the module notes).

    The answers are kept by node *slot* in numpy arrays (round of the answer, eligibility,
    declared examples, drift score) and a list of summaries, so a round reads the whole
    fleet's state with array operations (:meth:`roster`) instead of one object per node.
    """

    def __init__(self, max_age: int, scorer: DriftScorer | None,
                 reference: ReferenceProfile | None = None) -> None:
        self.max_age = max_age
        self.scorer = scorer
        self.reference = reference if reference is not None and reference.features else None
        self._slot: dict[int, int] = {}
        self._since = np.full(0, _NEVER, np.int64)  # the answer's round; _NEVER: no answer
        self._eligible = np.zeros(0, bool)
        self._examples = np.zeros(0, np.int64)
        self._score = np.zeros(0, np.float64)  # nan: no score
        self._drift: list[AnySummary | None] = []
        self._reasons: dict[int, str] = {}  # node -> why it is not eligible
        self._scores: dict[str | bytes, tuple[DriftSummary | None, float | None]] = {}
        self._packed: dict[int, tuple[PackedSummary, float | None]] = {}

    # --- slots ---------------------------------------------------------------------------------
    def _slots(self, nodes: Sequence[int]) -> np.ndarray:
        """The slots of ``nodes`` (new nodes get one, without an answer)."""
        slot = self._slot
        new = [n for n in nodes if n not in slot]
        if new:
            start = len(slot)
            slot.update(zip(new, range(start, start + len(new)), strict=True))
            size = len(slot)
            if size > len(self._since):
                cap = max(size, 2 * len(self._since), 64)
                grow = cap - len(self._since)
                self._since = np.concatenate([self._since, np.full(grow, _NEVER, np.int64)])
                self._eligible = np.concatenate([self._eligible, np.zeros(grow, bool)])
                self._examples = np.concatenate([self._examples, np.zeros(grow, np.int64)])
                self._score = np.concatenate([self._score, np.full(grow, np.nan)])
            self._drift.extend([None] * (size - len(self._drift)))
        return np.fromiter((slot[n] for n in nodes), np.int64, len(nodes))

    def _put(self, server_round: int, a: QueryAnswer) -> None:
        i = self._slot.get(a.node_id)
        if i is None:
            i = int(self._slots([a.node_id])[0])
        self._since[i] = server_round
        self._eligible[i] = a.eligible
        self._examples[i] = a.num_examples
        self._score[i] = np.nan if a.drift_score is None else a.drift_score
        self._drift[i] = a.drift
        if a.eligible:
            self._reasons.pop(a.node_id, None)
        else:
            self._reasons[a.node_id] = a.reason

    def _answer(self, node: int) -> tuple[int, QueryAnswer] | None:
        """``(round, answer)`` of ``node``, or ``None`` without one."""
        i = self._slot.get(node)
        if i is None or self._since[i] == _NEVER:
            return None
        s = float(self._score[i])
        return int(self._since[i]), QueryAnswer(
            node, bool(self._eligible[i]), self._reasons.get(node, ""), int(self._examples[i]),
            self._drift[i], None if s != s else s)

    # --- which answers are usable --------------------------------------------------------------
    def fresh(self, server_round: int, nodes: Iterable[int]) -> dict[int, QueryAnswer]:
        """The answers of ``nodes`` at most ``max_age`` rounds old (none when ``max_age`` 0)."""
        if self.max_age <= 0:
            return {}
        out = {}
        for n in nodes:
            entry = self._answer(n)
            if entry is not None and server_round - entry[0] <= self.max_age:
                out[n] = entry[1]
        return out

    def presumed(self, node: int) -> QueryAnswer:
        """A node without a fresh answer, as a candidate: eligible, with its last known
        examples, summary and score (none for a node never seen)."""
        entry = self._answer(node)
        if entry is None:
            return QueryAnswer(node, True)
        a = entry[1]
        return QueryAnswer(node, True, "", a.num_examples, a.drift, a.drift_score)

    def roster(self, server_round: int, nodes: Sequence[int]) -> Roster:
        """Every node of ``nodes`` as the round sees it: its fresh answer, or presumed
        eligible with what the book last knew of it (:meth:`fresh`, :meth:`presumed`)."""
        slots = self._slots(nodes)
        fresh = (self._since[slots] != _NEVER) & (server_round - self._since[slots]
                                                   <= self.max_age)
        eligible = np.where(fresh, self._eligible[slots], True)
        drift = self._drift
        ids = np.fromiter(nodes, np.uint64, len(nodes))
        reasons = {n: self._reasons.get(n, "") for n in ids[~eligible].tolist()}
        return Roster(ids, eligible, self._examples[slots].copy(),
                      self._score[slots].copy(), [drift[i] for i in slots.tolist()], reasons)

    def stale(self, server_round: int, nodes: Iterable[int], budget: int) -> list[int]:
        """Up to ``budget`` of ``nodes`` whose answer is older than ``max_age`` rounds (or who
        never answered), oldest answer first (never answered first), then by node id."""
        if budget <= 0:
            return []
        ids = np.fromiter(nodes, np.uint64)
        since = self._since[self._slots(ids.tolist())]
        aged = (since == _NEVER) | (server_round - since > self.max_age)
        ids, since = ids[aged], since[aged]
        order = np.lexsort((ids, since))[:budget]
        return ids[order].tolist()

    def record(self, server_round: int, answers: Mapping[int, QueryAnswer]) -> None:
        if self.max_age > 0:
            for a in answers.values():
                self._put(server_round, a)

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
                i = self._slot.get(n)
                if summary is not None and i is not None and self._since[i] != _NEVER:
                    since = int(self._since[i])
            self._put(since, QueryAnswer(n, True, "", prev.num_examples, summary, score))
        for n, why in declined.items():
            before = asked.get(n)
            self._put(server_round, QueryAnswer(
                n, False, f"declined in round {server_round}: {why}",
                before.num_examples if before else 0))
