"""Delayed labels: ``POST /api/v1/feedback`` with request ids, row indices and true labels.

Idempotent: sending the same labels again changes nothing (``unchanged``); a different label
for an instance replaces the earlier one (a correction, counted in ``applied``). Items naming no
logged, answered instance are returned in ``unknown`` and stored nowhere (retry them once the
log has written the request). Callers: an admin key or an inference key (the application that
asked), or a device token; never anonymous.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from registry.errors import AuthenticationError
from registry.evidence import apply_feedback
from registry.models import FeedbackCreate, FeedbackResult
from server.api.responses import CALLER_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import CallerDep, WriteSessionDep
from server.security import Caller


async def require_caller(caller: CallerDep) -> Caller:
    if caller.kind == "anonymous":
        raise AuthenticationError("feedback needs an admin key, an inference key or a device token")
    return caller


router = APIRouter(
    prefix="/feedback",
    tags=["evidence"],
    route_class=AuthFirstRoute,
    dependencies=[Depends(require_caller)],
)


@router.post(
    "",
    response_model=FeedbackResult,
    summary="True labels of logged inferences",
    responses={**CALLER_ERRORS, **error_responses(422)},
)
def post_feedback(body: FeedbackCreate, session: WriteSessionDep) -> FeedbackResult:
    result = apply_feedback(session, body.items, body.labelled_at)
    session.commit()
    return result
