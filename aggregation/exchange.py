"""The round loop's messaging over a Flower grid: push, pull until enough replies, query.

:class:`GridExchange` is the part of :class:`aggregation.rounds.RoundRunner` that talks to the
grid (``get_node_ids``, ``push_messages``, ``pull_messages``); train contents are shared by
the nodes with the same config (:func:`shared_contents`), as ``FedAvg.configure_train`` shares
one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MessageType,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from aggregation.answer_book import AnswerBook
from aggregation.messages import (
    QueryAnswer,
    declined,
    evaluation_metrics,
    parse_query_reply,
    query_content,
    records_of,
    to_arrayrecord,
    train_content,
)
from aggregation.round_types import GridLike, RoundSettings, Weights
from aggregation.selection import DriftScorer
from edgefleet import flower_keys as fk
from edgefleet.plan import PlanManifest

# Error replies the SuperLink makes up when the instruction's TTL expired or the node left.
_DROPOUT_CODES = frozenset({ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                            ErrorCode.NODE_UNAVAILABLE})


@dataclass
class Pending:
    """Pushed messages: the ones not answered yet (message id -> node), the replies by node,
    the deadline, the nodes messaged."""

    pending: dict[str, int]
    replies: dict[int, Message]
    deadline: float
    nodes: list[int]


class GridExchange:
    """The round loop's messaging (attributes: :class:`~aggregation.rounds.RoundRunner`'s)."""

    grid: GridLike
    manifest: PlanManifest
    settings: RoundSettings
    scorer: DriftScorer | None
    book: AnswerBook
    version: int | None
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def _wait_for_nodes(self) -> list[int]:
        deadline = self.clock() + self.settings.wait_for_nodes_s
        while True:
            nodes = sorted(int(n) for n in self.grid.get_node_ids())
            if len(nodes) >= self.settings.min_nodes or self.clock() >= deadline:
                return nodes
            self.sleep(self.settings.poll_interval_s)

    def _query(self, server_round: int, nodes: list[int]) -> dict[int, QueryAnswer]:
        """Query ``nodes``; their answers (recorded in the answer book), in ``nodes`` order."""
        return self._finish_query(server_round, self._push_query(server_round, nodes))

    def _push_query(self, server_round: int, nodes: list[int]) -> Pending:
        """Push a query to each of ``nodes``; the replies are pulled by :meth:`_finish_query`
        (and meanwhile by an :meth:`_exchange` given them as ``side``)."""
        content = query_content(server_round, self.settings.model, self.version)
        return self._push(server_round, MessageType.QUERY, dict.fromkeys(nodes, content),
                          self.settings.query_timeout_s)

    def _finish_query(self, server_round: int, side: Pending) -> dict[int, QueryAnswer]:
        """Pull the rest of the query's replies (until all are in or its deadline); parse and
        record the answers, in the queried nodes' order."""
        self._collect(side, None)
        replies = side.replies
        plan = self.manifest.plan_sha256
        drift = self.book.drift_of({
            n: None if m.has_error() else next(iter(records_of(m.content, ConfigRecord)), None)
            for n, m in replies.items()})
        answers = {n: parse_query_reply(m, self.scorer, plan, drift[n])
                   for n, m in replies.items()}
        for n in side.pending.values():
            answers[n] = QueryAnswer(n, False, "no query reply before the deadline")
        self.book.record(server_round, answers)
        return {n: answers[n] for n in side.nodes if n in answers}

    def _push(self, server_round: int, message_type: str, contents: Mapping[int, RecordDict],
              timeout: float) -> Pending:
        group = f"{server_round}"
        messages = [Message(c, n, message_type, ttl=timeout, group_id=group)
                    for n, c in contents.items()]
        ids = list(self.grid.push_messages(messages))
        return Pending({mid: int(m.metadata.dst_node_id)
                        for mid, m in zip(ids, messages, strict=True)},
                       {}, self.clock() + timeout, list(contents))

    def _exchange(
        self, server_round: int, message_type: str, contents: Mapping[int, RecordDict],
        timeout: float, *, until: int | None, declines: dict[int, str] | None = None,
        side: Pending | None = None,
    ) -> tuple[dict[int, Message], list[int]]:
        """Push one message per node; pull until ``until`` content replies, all, or timeout.

        Returns the replies by node (error replies included) and the nodes that did not answer;
        with ``until``, the replies that decline are also put in ``declines`` (node -> reason).
        The replies of ``side`` (messages pushed before) are pulled along into ``side``.
        """
        main = self._push(server_round, message_type, contents, timeout)
        self._collect(main, until, declines, side)
        return main.replies, sorted(main.pending.values())

    def _collect(self, main: Pending, until: int | None, declines: dict[int, str] | None = None,
                 side: Pending | None = None) -> None:
        """Pull ``main``'s replies until ``until`` content replies, all, or its deadline."""
        declines = {} if declines is None else declines
        pending, replies = main.pending, main.replies
        ok = 0  # content replies so far (no error, not a decline)
        while pending:
            for msg in self.grid.pull_messages(list(pending)):
                node = pending.pop(msg.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                replies[node] = msg
                if until is not None and not msg.has_error():
                    why = declined(msg)
                    if why is None:
                        ok += 1
                    else:
                        declines[node] = why
            if side is not None and side.pending:  # a pull of its own: one push, one pull
                for msg in self.grid.pull_messages(list(side.pending)):
                    node = side.pending.pop(msg.metadata.reply_to_message_id, None)
                    if node is not None:
                        side.replies[node] = msg
            if (until is not None and ok >= until) or self.clock() >= main.deadline:
                break
            if pending:
                self.sleep(self.settings.poll_interval_s)

    def _client_evaluation(self, server_round: int, weights: Weights,
                           eligible: list[int], rng: np.random.Generator) -> dict[str, float]:
        n = min(self.settings.eval_clients, len(eligible))
        idx = rng.choice(len(eligible), size=n, replace=False)
        arrays = to_arrayrecord(weights)
        config: dict[str, ConfigRecordValues] = {
            fk.SERVER_ROUND: server_round, fk.MODEL: self.settings.model,
        }
        contents = {eligible[int(i)]: train_content(arrays, config) for i in idx}
        replies, _ = self._exchange(server_round, MessageType.EVALUATE, contents,
                                    self.settings.eval_timeout_s, until=None)
        return evaluation_metrics(list(replies.values()))


def shared_contents(arrays: ArrayRecord, base: Mapping[str, ConfigRecordValues],
                     per_node: Mapping[int, Mapping[str, ConfigRecordValues]]
                     ) -> dict[int, RecordDict]:
    """Train contents by node: one ``RecordDict`` per distinct node config, shared by the nodes
    with that config (as ``FedAvg.configure_train`` shares one among all nodes)."""
    shared: dict[tuple[tuple[str, ConfigRecordValues], ...], RecordDict] = {}
    out = {}
    for node, cfg in per_node.items():
        key = tuple(sorted(cfg.items()))
        content = shared.get(key)
        if content is None:
            content = shared[key] = train_content(arrays, {**base, **cfg})
        out[node] = content
    return out


def dropped(message: Message) -> bool:
    """An error reply that only says the message expired or the node went away (a drop-out)."""
    return message.has_error() and message.error.code in _DROPOUT_CODES
