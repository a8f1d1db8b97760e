"""The audit trail and model cards on the wire (server routes, the CLI, the aggregation).

Routes (admin key)::

    GET  /api/v1/audit?action=&actor=&target=&since=&until=&after_seq=&limit=&order=
                                            -> AuditPage (chain order, or newest first)
    GET  /api/v1/audit/verify               -> AuditVerifyResult
    POST /api/v1/audit/runs                 RunEvent -> AuditRecordInfo (201): a federated run
                                            started or ended, recorded as the calling key
    GET  /api/v1/models/{m}/versions/{v}/card[?format=json|markdown|html]
                                            -> ModelCard (or the rendered page)
    PUT  /api/v1/models/{m}/versions/{v}/card/limitations
                                            CardLimitations -> ModelCard

A page's ``next_after_seq`` is the ``after_seq`` of the next page (``None`` on the last page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.bounds import CleanLine, CleanText, Count, JsonObject, ModelName

__all__ = [
    "AuditPage",
    "AuditProblemInfo",
    "AuditRecordInfo",
    "AuditVerifyResult",
    "CardLimitations",
    "RunEvent",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AuditRecordInfo(_Reply):
    """One record of the trail: ``hash`` covers every other field and ``prev_hash``."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    request_id: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str | None = None
    prev_hash: str
    hash: str


class AuditPage(_Reply):
    """A page of records and where the next one starts."""

    items: list[AuditRecordInfo]
    limit: int
    next_after_seq: int | None = None


class AuditProblemInfo(_Reply):
    """A break in the chain: ``altered``, ``missing``, ``broken_link`` or ``head``."""

    seq: int
    kind: str
    detail: str


class AuditVerifyResult(_Reply):
    """The result of walking the whole chain."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problems: list[AuditProblemInfo] = Field(default_factory=list)


class RunEvent(_Wire):
    """A federated run starting or ending, as the aggregation reports it."""

    model: ModelName
    run: CleanLine = Field(min_length=1, max_length=200)
    event: Literal["start", "end"]
    outcome: Literal["running", "completed", "failed"] = "running"
    rounds: Count | None = None
    detail: JsonObject = Field(default_factory=dict)
    reason: CleanText | None = Field(default=None, max_length=1000)


class CardLimitations(_Wire):
    """The known limitations of a version, written by an operator (replaces the earlier text)."""

    limitations: CleanText = Field(max_length=4000)
