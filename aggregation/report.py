"""What happened in one round: who was asked, who answered, what was refused and why.

A :class:`RoundReport` is filled in by :class:`aggregation.rounds.RoundRunner` as the round goes
and is what lands, summarised, in the lineage of the version the round publishes
(:meth:`RoundReport.to_dict` is JSON-safe).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from aggregation.validation_types import RefusalReason, Verdict

RoundStatus = Literal["running", "ok", "failed"]


@dataclass
class RoundReport:
    """The record of one federated round.

    Attributes
    ----------
    server_round : int
        The round number (1-based, continuing across resumed runs).
    status : {"running", "ok", "failed"}
        ``"failed"`` means the global weights were left unchanged.
    failure : str or None
        Why the round failed.
    connected : int
    queried : list[int]
        Nodes sent a query message this round (see :mod:`aggregation.answer_book`).
        Nodes connected to the grid when the round started.
    eligible : list[int]
        Nodes whose query reply said they may train.
    ineligible : dict[int, str]
        Nodes that answered the query but may not train, with their reason.
    selected : list[int]
        Nodes sent a train message (over-selected).
    replied : list[int]
        Nodes whose train update arrived before the round closed.
    declined : dict[int, str]
        Nodes that answered the train message by declining to train, with their reason (e.g.
        conditions stopped holding); not refusals, just no update.
    stragglers : list[int]
        Selected nodes whose reply had not arrived when the round closed, or whose message
        expired or whose node left (Flower's ``MESSAGE_UNAVAILABLE``/``NODE_UNAVAILABLE``
        errors); ignored.
    error_replies : dict[int, str]
        Nodes whose ClientApp failed (any other Flower error instead of an update).
    accepted : list[int]
        Nodes whose update passed validation and was aggregated.
    refused : dict[int, list[str]]
        Refused nodes with every ``"reason: detail"``.
    norm_median : float or None
        The median update norm the relative bound used (``None`` when not applied).
    metrics : dict[str, float]
        Aggregated train metrics, holdout and client evaluation (prefixed ``train.``,
        ``holdout.``, ``clients.``).
    published_version : int or None
        The registry version this round's weights were published as.
    timings : dict[str, float]
        Seconds spent per phase (query, train, validate, aggregate, evaluate, publish).
    """

    server_round: int
    status: RoundStatus = "running"
    failure: str | None = None
    connected: int = 0
    queried: list[int] = field(default_factory=list)
    eligible: list[int] = field(default_factory=list)
    ineligible: dict[int, str] = field(default_factory=dict)
    selected: list[int] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)
    declined: dict[int, str] = field(default_factory=dict)
    stragglers: list[int] = field(default_factory=list)
    error_replies: dict[int, str] = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)
    refused: dict[int, list[str]] = field(default_factory=dict)
    refused_reasons: Counter[str] = field(default_factory=Counter)
    norm_median: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    published_version: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def record(self, verdicts: list[Verdict]) -> None:
        """Record validation verdicts: accepted nodes, refusals and per-reason counts."""
        for v in verdicts:
            if v.accepted:
                self.accepted.append(v.node_id)
                continue
            self.refused[v.node_id] = [f"{r.reason.value}: {r.detail}" for r in v.refusals]
            for reason in v.reasons:
                self.refused_reasons[reason.value] += 1

    def refused_count(self, reason: RefusalReason | None = None) -> int:
        """Refused updates, in total or for one reason."""
        if reason is None:
            return len(self.refused)
        return self.refused_reasons.get(reason.value, 0)

    def fail(self, reason: str) -> None:
        self.status = "failed"
        self.failure = reason

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: node ids (Flower's unsigned 64-bit integers) become strings."""
        return {
            "server_round": self.server_round,
            "status": self.status,
            "failure": self.failure,
            "connected": self.connected,
            "queried": [str(n) for n in self.queried],
            "eligible": [str(n) for n in self.eligible],
            "ineligible": {str(k): v for k, v in self.ineligible.items()},
            "selected": [str(n) for n in self.selected],
            "replied": [str(n) for n in self.replied],
            "declined": {str(k): v for k, v in self.declined.items()},
            "stragglers": [str(n) for n in self.stragglers],
            "error_replies": {str(k): v for k, v in self.error_replies.items()},
            "accepted": [str(n) for n in self.accepted],
            "refused": {str(k): v for k, v in self.refused.items()},
            "refused_reasons": dict(self.refused_reasons),
            "norm_median": self.norm_median,
            "metrics": dict(self.metrics),
            "published_version": self.published_version,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }

    def summary_line(self) -> str:
        """One log line: ``round 3 ok: 5/7 replied, 4 accepted, 1 refused (norm:1) acc=0.91``."""
        refused = ", ".join(f"{k}:{n}" for k, n in sorted(self.refused_reasons.items()))
        acc = self.metrics.get("holdout.accuracy")
        tail = f" holdout_acc={acc:.4f}" if acc is not None else ""
        why = f" ({self.failure})" if self.failure else ""
        return (
            f"round {self.server_round} {self.status}{why}: {len(self.replied)}/"
            f"{len(self.selected)} replied, {len(self.accepted)} accepted, "
            f"{len(self.refused)} refused ({refused or '-'}){tail}"
        )
