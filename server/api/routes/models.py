"""Models: register, list/search, read, describe (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.bounds import QueryText
from edgefleet.wire import Page
from registry import catalog, search
from registry.models import ModelCreate, ModelPublic, ModelUpdate
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, Limit, ModelPath, Offset, SessionDep, WriteSessionDep

router = APIRouter(
    prefix="/models", tags=["models"], responses=ADMIN_ERRORS, route_class=AuthFirstRoute
)


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    summary="Register a model",
    responses=error_responses(409),
)
def create_model(body: ModelCreate, caller: AdminDep, session: WriteSessionDep) -> ModelPublic:
    model = catalog.create_model(session, body, actor=caller.label)
    session.commit()
    return catalog.model_public(session, model)


@router.get(
    "", response_model=Page[ModelPublic], summary="Search models", responses=error_responses(422)
)
def list_models(
    _: AdminDep,
    session: SessionDep,
    task: QueryText | None = None,
    tag: QueryText | None = None,
    name: Annotated[QueryText | None, Query(description="case-insensitive substring")] = None,
    alias: Annotated[QueryText | None, Query(description="models that have this alias")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ModelPublic]:
    return search.search_models(
        session, task=task, tag=tag, name=name, alias=alias, limit=limit, offset=offset
    )


@router.get(
    "/{model}", response_model=ModelPublic, summary="Read a model", responses=error_responses(404)
)
def get_model(model: ModelPath, _: AdminDep, session: SessionDep) -> ModelPublic:
    return catalog.model_public(session, catalog.get_model(session, model))


@router.patch(
    "/{model}",
    response_model=ModelPublic,
    summary="Describe or tag a model",
    responses=error_responses(404),
)
def update_model(
    model: ModelPath, body: ModelUpdate, caller: AdminDep, session: WriteSessionDep
) -> ModelPublic:
    row = catalog.update_model(session, model, body, actor=caller.label)
    session.commit()
    return catalog.model_public(session, row)
