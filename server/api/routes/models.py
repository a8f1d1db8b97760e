"""Models: register, list/search, read, describe (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.wire import Page
from registry import catalog, search
from registry.models import ModelCreate, ModelPublic, ModelUpdate
from server.api.responses import ADMIN_ERRORS, error_responses
from server.deps import AdminDep, Limit, Offset, SessionDep, WriteSessionDep

router = APIRouter(prefix="/models", tags=["models"], responses=ADMIN_ERRORS)


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    summary="Register a model",
    responses=error_responses(409),
)
def create_model(body: ModelCreate, _: AdminDep, session: WriteSessionDep) -> ModelPublic:
    model = catalog.create_model(session, body)
    session.commit()
    return catalog.model_public(session, model)


@router.get(
    "", response_model=Page[ModelPublic], summary="Search models", responses=error_responses(422)
)
def list_models(
    _: AdminDep,
    session: SessionDep,
    task: str | None = None,
    tag: str | None = None,
    name: Annotated[str | None, Query(description="case-insensitive substring")] = None,
    alias: Annotated[str | None, Query(description="models that have this alias")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ModelPublic]:
    return search.search_models(
        session, task=task, tag=tag, name=name, alias=alias, limit=limit, offset=offset
    )


@router.get(
    "/{model}", response_model=ModelPublic, summary="Read a model", responses=error_responses(404)
)
def get_model(model: str, _: AdminDep, session: SessionDep) -> ModelPublic:
    return catalog.model_public(session, catalog.get_model(session, model))


@router.patch(
    "/{model}",
    response_model=ModelPublic,
    summary="Describe or tag a model",
    responses=error_responses(404),
)
def update_model(
    model: str, body: ModelUpdate, _: AdminDep, session: WriteSessionDep
) -> ModelPublic:
    row = catalog.update_model(session, model, body)
    session.commit()
    return catalog.model_public(session, row)
