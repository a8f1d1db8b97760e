"""Rollouts (admin): start, read, list, approve, abort, and the timeline with its evidence.

``POST /api/v1/rollouts`` starts one (201; 409 while the model has an active rollout or the
candidate is not READY; 422 for a malformed request); the server's controller
(:mod:`server.rollouts`) then ticks it. ``approve`` releases what an ``awaiting_approval``
rollout waits for (409 otherwise); ``abort`` ends an active one with every device and caller
back on the baseline (409 once it has ended). Every change is audited in its transaction.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from edgefleet.rollouts import (
    RolloutAbort,
    RolloutApprove,
    RolloutCreate,
    RolloutEventInfo,
    RolloutInfo,
    RolloutState,
)
from edgefleet.wire import Page
from registry.rollouts import machine, queries
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, Limit, ModelQuery, Offset, SessionDep, WriteSessionDep

router = APIRouter(
    prefix="/rollouts",
    tags=["rollouts"],
    responses={**ADMIN_ERRORS, **error_responses(404)},
    route_class=AuthFirstRoute,
)

RolloutId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the rollout's id")]


@router.post("", response_model=RolloutInfo, status_code=201, summary="Start a rollout",
             responses=error_responses(409))
def start_rollout(body: RolloutCreate, caller: AdminDep, session: WriteSessionDep) -> RolloutInfo:
    row = machine.start(session, body, actor=caller.label)
    session.commit()
    return queries.rollout_info(session, row)


@router.get("", response_model=Page[RolloutInfo], summary="Rollouts, newest first")
def list_rollouts(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    state: Annotated[RolloutState | None, Query()] = None,
    active: Annotated[bool | None, Query(description="only active (or only ended) ones")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[RolloutInfo]:
    return queries.list_rollouts(session, model=model, state=state, active=active, limit=limit,
                                 offset=offset)


@router.get("/{rollout_id}", response_model=RolloutInfo, summary="One rollout")
def get_rollout(rollout_id: RolloutId, _: AdminDep, session: SessionDep) -> RolloutInfo:
    return queries.rollout_info(session, queries.get_rollout(session, rollout_id))


@router.get("/{rollout_id}/history", response_model=list[RolloutEventInfo],
            summary="The timeline: every transition with its evidence, oldest first")
def rollout_history(rollout_id: RolloutId, _: AdminDep,
                    session: SessionDep) -> list[RolloutEventInfo]:
    return queries.timeline(session, rollout_id)


@router.post("/{rollout_id}/approve", response_model=RolloutInfo,
             summary="Release the step or the promotion a rollout awaits",
             responses=error_responses(409))
def approve_rollout(rollout_id: RolloutId, body: RolloutApprove, caller: AdminDep,
                    session: WriteSessionDep) -> RolloutInfo:
    row = queries.get_rollout(session, rollout_id, for_update=True)
    machine.approve(session, row, body, actor=caller.label)
    session.commit()
    return queries.rollout_info(session, row)


@router.post("/{rollout_id}/abort", response_model=RolloutInfo,
             summary="End an active rollout: everyone back on the baseline",
             responses=error_responses(409))
def abort_rollout(rollout_id: RolloutId, body: RolloutAbort, caller: AdminDep,
                  session: WriteSessionDep) -> RolloutInfo:
    row = queries.get_rollout(session, rollout_id, for_update=True)
    machine.abort(session, row, body, actor=caller.label)
    session.commit()
    return queries.rollout_info(session, row)
