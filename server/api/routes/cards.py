"""Model cards (admin): a version's card as JSON, Markdown or HTML; its known limitations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from edgefleet.audit import CardLimitations
from edgefleet.cards import ModelCard
from registry.card_render import to_html, to_markdown
from registry.cards import build_card, set_limitations
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, ModelPath, SessionDep, VersionPath, WriteSessionDep

router = APIRouter(
    prefix="/models/{model}/versions/{version}/card",
    tags=["cards"],
    responses={**ADMIN_ERRORS, **error_responses(404)},
    route_class=AuthFirstRoute,
)

_MEDIA = {"markdown": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}


@router.get(
    "",
    response_model=ModelCard,
    summary="A version's model card",
    responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
)
def get_card(
    model: ModelPath,
    version: VersionPath,
    _: AdminDep,
    session: SessionDep,
    format: Annotated[
        Literal["json", "markdown", "html"], Query(description="JSON, or a rendered page")
    ] = "json",
) -> ModelCard | Response:
    card = build_card(session, model, version)
    if format == "json":
        return card
    text = to_markdown(card) if format == "markdown" else to_html(card)
    return Response(content=text, media_type=_MEDIA[format])


@router.put(
    "/limitations",
    response_model=ModelCard,
    summary="Write a version's known limitations",
)
def put_limitations(
    model: ModelPath,
    version: VersionPath,
    body: CardLimitations,
    caller: AdminDep,
    session: WriteSessionDep,
) -> ModelCard:
    set_limitations(session, model, version, body.limitations, actor=caller.label)
    session.commit()
    return build_card(session, model, version)
