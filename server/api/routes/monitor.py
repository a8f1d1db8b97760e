"""Per-version monitoring: ``GET /api/v1/models/{m}/monitor?since=&until=&against=&window_s=``.

Admin only. ``since`` defaults to 24 hours before ``until``, ``until`` to now; the window may
span at most 366 days. The figures are :func:`server.evidence.monitor.monitor`'s.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.bounds import Timestamp
from registry.catalog import get_model
from registry.errors import InvalidQueryError
from registry.models.columns import utcnow
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import AdminDep, ModelPath, SessionDep, VersionQuery
from server.evidence.monitor import MonitorReport, monitor

router = APIRouter(prefix="/models/{model}/monitor", tags=["evidence"], route_class=AuthFirstRoute)


@router.get(
    "",
    response_model=MonitorReport,
    summary="Per-version requests, errors, latency, predictions and accuracy",
    responses={**ADMIN_ERRORS, **error_responses(404, 422)},
)
def read_monitor(
    model: ModelPath,
    _: AdminDep,
    session: SessionDep,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    against: VersionQuery = None,
    window_s: Annotated[int, Query(ge=60, le=31 * 86400)] = 3600,
) -> MonitorReport:
    get_model(session, model)  # 404 for an unknown model
    end = until or utcnow()
    start = since or end - timedelta(days=1)
    if start >= end:
        raise InvalidQueryError("since must lie before until")
    if end - start > timedelta(days=366):
        raise InvalidQueryError("the window may span at most 366 days")
    return monitor(session, model, start, end, against=against, window_s=window_s)
