"""Aliases: read (now or at any past time), move, remove, roll back, history (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from edgefleet.bounds import CleanText, Timestamp
from edgefleet.wire import AliasEventInfo, AliasInfo, AliasMove, AliasRollback, Page
from registry import aliases
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import (
    AdminDep,
    AliasPath,
    Limit,
    ModelPath,
    Offset,
    SessionDep,
    SettingsDep,
    WriteSessionDep,
)

router = APIRouter(
    prefix="/models/{model}",
    tags=["aliases"],
    responses={**ADMIN_ERRORS, **error_responses(404)},
    route_class=AuthFirstRoute,
)


@router.get("/aliases", response_model=list[AliasInfo], summary="A model's aliases")
def list_aliases(model: ModelPath, _: AdminDep, session: SessionDep) -> list[AliasInfo]:
    return aliases.list_aliases(session, model)


@router.get("/aliases/{alias}", response_model=AliasInfo, summary="Where an alias points")
def get_alias(
    model: ModelPath,
    alias: AliasPath,
    _: AdminDep,
    session: SessionDep,
    at: Annotated[
        Timestamp | None,
        Query(description="answer for this moment instead (ISO 8601 with zone)"),
    ] = None,
) -> AliasInfo:
    if at is None:
        return aliases.alias_info(session, aliases.get_alias(session, model, alias))
    event = aliases.alias_at(session, model, alias, at)
    assert event.to_version is not None
    return AliasInfo(
        model=event.model,
        alias=event.alias,
        version=event.to_version,
        rollout_percent=event.rollout_percent,
        updated_at=event.at,
        updated_by=event.actor,
    )


@router.put(
    "/aliases/{alias}",
    response_model=AliasInfo,
    summary="Point an alias at a version",
    responses=error_responses(409),
)
def move_alias(
    model: ModelPath,
    alias: AliasPath,
    body: AliasMove,
    caller: AdminDep,
    session: WriteSessionDep,
    settings: SettingsDep,
) -> AliasInfo:
    row = aliases.set_alias(
        session,
        model,
        alias,
        body,
        actor=caller.label,
        default_rollout_percent=settings.canary_rollout_percent,
    )
    session.commit()
    return aliases.alias_info(session, row)


@router.delete("/aliases/{alias}", status_code=204, summary="Remove an alias")
def delete_alias(
    model: ModelPath,
    alias: AliasPath,
    caller: AdminDep,
    session: WriteSessionDep,
    reason: Annotated[CleanText, Query(max_length=1000)] = "",
) -> Response:
    aliases.delete_alias(session, model, alias, actor=caller.label, reason=reason)
    session.commit()
    return Response(status_code=204)


@router.post(
    "/aliases/{alias}/rollback",
    response_model=AliasInfo,
    summary="Move an alias back to where its latest move took it from",
    responses=error_responses(409),
)
def rollback_alias(
    model: ModelPath,
    alias: AliasPath,
    body: AliasRollback,
    caller: AdminDep,
    session: WriteSessionDep,
) -> AliasInfo:
    row = aliases.rollback_alias(session, model, alias, actor=caller.label, reason=body.reason)
    session.commit()
    return aliases.alias_info(session, row)


@router.get(
    "/aliases/{alias}/history",
    response_model=Page[AliasEventInfo],
    summary="Every move of an alias, newest first",
)
def alias_history(
    model: ModelPath,
    alias: AliasPath,
    _: AdminDep,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AliasEventInfo]:
    return aliases.alias_history(session, model, alias, limit=limit, offset=offset)


@router.get(
    "/alias-history",
    response_model=Page[AliasEventInfo],
    summary="Every move of every alias of a model, newest first",
)
def model_alias_history(
    model: ModelPath,
    _: AdminDep,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AliasEventInfo]:
    return aliases.alias_history(session, model, None, limit=limit, offset=offset)
