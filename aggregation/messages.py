"""The shapes of the messages the ServerApp exchanges with the edge ClientApp.

=========  ============================================  ==========================================
type       server -> node (``RecordDict``)               node -> server
=========  ============================================  ==========================================
query      ``config``: server-round, model, version      ``ConfigRecord``: ``eligible`` (bool),
                                                         ``reasons`` (JSON list) or ``reason``,
                                                         ``drift-packed`` (bytes, packed summary)
                                                         or ``drift`` (DriftSummary JSON),
                                                         ``plan-sha256``, optional ``drift-score``;
                                                         ``num-examples`` in a ``MetricRecord`` (or
                                                         the ``ConfigRecord``)
train      ``arrays``: global weights by weight name;    one ``ArrayRecord`` (weights by name), one
           ``config``: server-round, model, version,     ``MetricRecord`` with ``num-examples``
           plan-sha256, epochs, lr, seed, drift-score    (+ train metrics), a ``ConfigRecord``
           [, proximal-mu]                               (``status``, ``drift-packed``). A
                                                         *decline* has no arrays,
                                                         ``status="declined"`` and a ``reason``
evaluate   ``arrays`` + ``config`` as for train          one ``MetricRecord``: ``num-examples``
                                                         and scalar metrics (``eval-acc``...)
=========  ============================================  ==========================================

This is what :mod:`edge_client.flower_client` (the device's ClientApp) speaks; every name is a
constant of :mod:`edgefleet.flower_keys`, which both sides import. Parsing never
raises on what a node sent: a malformed query reply makes the node ineligible for the round,
with the reason recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MetricRecord,
    RecordDict,
)

from aggregation.selection.base import Candidate
from aggregation.selection.drift import DriftScorer
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary
from edgefleet.drift.baseline import AnySummary
from edgefleet.drift.packed import unpack
from edgefleet.errors import SummaryError


@dataclass(frozen=True)
class QueryAnswer:
    """A node's answer to the query step.

    Attributes
    ----------
    node_id : int
        The node.
    eligible : bool
        Whether it may train now.
    reason : str
        Why it may not (empty when eligible).
    num_examples : int
        Local training examples it declares (bounds its train reply's ``num-examples``).
    drift : DriftSummary, PackedSummary or None
        Its drift summary, when it sent a valid one (packed, as Flower replies carry it, or
        parsed from JSON).
    drift_score : float or None
        Its drift score in ``[0, 1]`` (computed from ``drift``, or as sent).
    """

    node_id: int
    eligible: bool
    reason: str = ""
    num_examples: int = 0
    drift: AnySummary | None = None
    drift_score: float | None = None

    def candidate(self) -> Candidate:
        return Candidate(self.node_id, self.num_examples, self.drift_score)


R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


def records_of(content: RecordDict, kind: type[R]) -> list[R]:
    """The records of one kind in ``content``, in order (without building Flower's synced
    views ``content.config_records`` etc., which re-insert every record on each access)."""
    return [r for r in content.values() if isinstance(r, kind)]


def query_content(server_round: int, model: str, version: int | None) -> RecordDict:
    """The query message's content."""
    config: dict[str, ConfigRecordValues] = {fk.SERVER_ROUND: server_round, fk.MODEL: model}
    if version is not None:
        config[fk.VERSION] = version
    return RecordDict({fk.CONFIG: ConfigRecord(config)})


def parse_query_reply(
    message: Message, scorer: DriftScorer | None, plan_sha256: str | None = None,
    drift: tuple[AnySummary | None, float | None] | None = None,
) -> QueryAnswer:
    """Turn a query reply into a :class:`QueryAnswer` (ineligible, with a reason, if malformed).

    A node that reports another plan than ``plan_sha256`` cannot train this run's weights and is
    ineligible. ``drift`` is the reply's (summary, score), decoded already (the round loop
    decodes a round's replies together, :meth:`aggregation.answer_book.AnswerBook.drift_of`);
    without it the reply's summary is decoded (packed, against ``scorer``'s reference, or JSON)
    and scored with ``scorer``.
    """
    node = int(message.metadata.src_node_id)
    if message.has_error():
        return QueryAnswer(node, False, f"error reply: {message.error.reason}")
    configs = records_of(message.content, ConfigRecord)
    if not configs:
        return QueryAnswer(node, False, "query reply without a ConfigRecord")
    cfg = configs[0]
    eligible = cfg.get(fk.ELIGIBLE)
    if not isinstance(eligible, bool):
        return QueryAnswer(node, False, f"{fk.ELIGIBLE!r} must be a bool, got {eligible!r}")
    metrics = records_of(message.content, MetricRecord)
    n = metrics[0].get(fk.NUM_EXAMPLES) if metrics else cfg.get(fk.NUM_EXAMPLES, 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return QueryAnswer(node, False, f"'{fk.NUM_EXAMPLES}' must be an int >= 0, got {n!r}")
    if not eligible:
        return QueryAnswer(node, False, _reasons(cfg) or "not eligible", n)
    plan = cfg.get(fk.PLAN_SHA256)
    if plan_sha256 and isinstance(plan, str) and plan and plan != plan_sha256:
        return QueryAnswer(node, False, f"runs another plan ({plan[:12]}…)", n)
    if n == 0:
        return QueryAnswer(node, False, "no local training examples", 0)
    if drift is not None:
        summary, score = drift
    else:
        summary = _parse_drift(cfg, scorer)
        score = scorer.score(summary) if scorer is not None and summary is not None else None
    if score is None:
        sent = cfg.get(fk.DRIFT_SCORE)
        if isinstance(sent, int | float) and not isinstance(sent, bool) and math.isfinite(sent):
            score = min(1.0, max(0.0, float(sent)))
    return QueryAnswer(node, True, "", n, summary, score)


def _reasons(cfg: ConfigRecord) -> str:
    """``reasons`` (a JSON list, as the edge ClientApp sends) or ``reason``, as one string."""
    raw = cfg.get(fk.REASONS)
    if isinstance(raw, str) and raw:
        try:
            items = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(items, list):
            return "; ".join(str(i) for i in items)
        return str(items)
    return str(cfg.get(fk.REASON, "") or "")


def declined(message: Message) -> str | None:
    """The reason of a train reply that *declines* to train (``status="declined"``), else None."""
    if message.has_error():
        return None
    for cfg in records_of(message.content, ConfigRecord):
        if cfg.get(fk.STATUS) == fk.STATUS_DECLINED:
            return str(cfg.get(fk.REASON, "") or fk.STATUS_DECLINED)
    return None


def _parse_drift(cfg: ConfigRecord, scorer: DriftScorer | None) -> DriftSummary | None:
    packed, raw = cfg.get(fk.DRIFT_PACKED), cfg.get(fk.DRIFT)
    try:
        if isinstance(packed, bytes) and packed and scorer is not None:
            return unpack(packed, scorer.reference).to_summary()
        if isinstance(raw, str | bytes) and raw:
            return DriftSummary.parse(raw)
    except SummaryError:
        return None
    return None


def to_arrayrecord(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Weights by name as an ``ArrayRecord`` (arrays made contiguous)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def train_content(arrays: ArrayRecord, config: Mapping[str, ConfigRecordValues]) -> RecordDict:
    """A train (or evaluate) message's content: the global weights and the node's config."""
    return RecordDict({fk.ARRAYS: arrays, fk.CONFIG: ConfigRecord(dict(config))})


def evaluation_metrics(replies: Sequence[Message]) -> dict[str, float]:
    """Weighted mean (by ``num-examples``) of the scalar metrics every evaluate reply reported.

    Error replies and replies without a positive ``num-examples`` are skipped. Keys are prefixed
    ``clients.``; ``clients.num-examples`` is the total and ``clients.nodes`` the count.
    """
    rows: list[tuple[float, dict[str, float]]] = []
    for msg in replies:
        if msg.has_error():
            continue
        records = list(msg.content.metric_records.values())
        if len(records) != 1:
            continue
        metrics = {
            k: float(v)
            for k, v in records[0].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        n = metrics.pop(fk.NUM_EXAMPLES, 0.0)
        if n > 0:
            rows.append((n, metrics))
    if not rows:
        return {}
    total = sum(n for n, _ in rows)
    common = set.intersection(*(set(m) for _, m in rows))
    out = {f"clients.{k}": sum(n * m[k] for n, m in rows) / total for k in sorted(common)}
    out[f"clients.{fk.NUM_EXAMPLES}"] = total
    out["clients.nodes"] = float(len(rows))
    return out
