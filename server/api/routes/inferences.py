"""The inference log: ``GET /api/v1/inferences`` (admin), newest first, filtered and paginated.

Filters: ``model``, ``version`` (needs ``model``), ``alias``, ``variant``, ``caller``
(``kind:name``), ``status``, ``errors`` (status >= 400 only), ``request_id``, ``since`` /
``until`` (ISO 8601 with a zone; ``since`` included, ``until`` excluded) and ``labelled``. Records
reach the log within the writer's flush interval (:mod:`server.evidence.writer`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.bounds import AliasName, QueryText, Timestamp
from edgefleet.wire import Page
from registry.errors import InvalidQueryError
from registry.evidence import InferenceFilter, list_records
from registry.models import InferenceRecordPublic
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, Limit, ModelQuery, Offset, SessionDep, VersionQuery

router = APIRouter(prefix="/inferences", tags=["evidence"], route_class=AuthFirstRoute)


@router.get(
    "",
    response_model=Page[InferenceRecordPublic],
    summary="Logged inferences",
    responses={**ADMIN_ERRORS, **error_responses(422)},
)
def list_inferences(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    version: VersionQuery = None,
    alias: Annotated[AliasName | None, Query()] = None,
    variant: Annotated[AliasName | None, Query()] = None,
    caller: Annotated[QueryText | None, Query()] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    errors: bool = False,
    request_id: Annotated[QueryText | None, Query()] = None,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    labelled: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[InferenceRecordPublic]:
    if version is not None and model is None:
        raise InvalidQueryError("version needs model")
    f = InferenceFilter(
        model=model, version=version, alias=alias, variant=variant, caller=caller,
        status=status, errors_only=errors, request_id=request_id, since=since, until=until,
        labelled=labelled,
    )
    rows, total = list_records(session, f, limit=limit, offset=offset)
    items = [InferenceRecordPublic.model_validate(r, from_attributes=True) for r in rows]
    return Page[InferenceRecordPublic](items=items, total=total, limit=limit, offset=offset)
