"""The audit trail (admin): list with filters and paging, verify the chain, record run events."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from edgefleet.audit import (
    AuditPage,
    AuditProblemInfo,
    AuditRecordInfo,
    AuditVerifyResult,
    RunEvent,
)
from edgefleet.bounds import DB_INT_MAX, QueryText, Timestamp
from registry import audit
from registry.catalog import get_model
from registry.models import AuditRecord
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, Limit, SessionDep, WriteSessionDep

router = APIRouter(
    prefix="/audit", tags=["audit"], responses=ADMIN_ERRORS, route_class=AuthFirstRoute
)


def record_info(row: AuditRecord) -> AuditRecordInfo:
    """The wire view of one record."""
    return AuditRecordInfo.model_validate(row, from_attributes=True)


@router.get("", response_model=AuditPage, summary="Audit records, filtered and paged")
def list_audit(
    _: AdminDep,
    session: SessionDep,
    action: Annotated[
        QueryText | None, Query(description="an action, or a family such as 'rollout.*'")
    ] = None,
    actor: Annotated[QueryText | None, Query(description="e.g. 'admin:alice'")] = None,
    target: Annotated[
        QueryText | None, Query(description="e.g. 'digits/3'; a trailing '*' matches a prefix")
    ] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    after_seq: Annotated[
        int | None, Query(ge=0, le=DB_INT_MAX, description="the previous page's next_after_seq")
    ] = None,
    order: Literal["asc", "desc"] = "asc",
    limit: Limit = 100,
) -> AuditPage:
    query = audit.AuditQuery(
        action=action, actor=actor, target=target, since=since, until=until,
        after_seq=after_seq, limit=limit, newest_first=order == "desc",
    )
    rows = audit.list_records(session, query)
    return AuditPage(
        items=[record_info(r) for r in rows],
        limit=limit,
        next_after_seq=rows[-1].seq if len(rows) == limit else None,
    )


@router.get("/verify", response_model=AuditVerifyResult, summary="Verify the hash chain")
def verify_audit(_: AdminDep, session: SessionDep) -> AuditVerifyResult:
    """Walk every record; ``problems`` names each altered, removed or re-linked one."""
    report = audit.verify(session)
    return AuditVerifyResult(
        ok=report.ok,
        checked=report.checked,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
        problems=[AuditProblemInfo(seq=p.seq, kind=p.kind, detail=p.detail)
                  for p in report.problems],
    )


@router.post(
    "/runs",
    status_code=201,
    response_model=AuditRecordInfo,
    summary="Record that a federated run started or ended",
    responses=error_responses(404),
)
def record_run(body: RunEvent, caller: AdminDep, session: WriteSessionDep) -> AuditRecordInfo:
    """The aggregation reports a run's start and end; the record's actor is the calling key."""
    model = get_model(session, body.model)
    after = {"outcome": body.outcome, "rounds": body.rounds, **body.detail}
    row = audit.record(
        session,
        actor=caller.label,
        action=f"run.{body.event}",
        target=f"{model.name}/run/{body.run}",
        after=after,
        reason=body.reason,
    )
    session.commit()
    return record_info(row)
