"""Telemetry: devices post reports (idempotent); the operator queries them and the device
events they carried (``GET /api/v1/telemetry/events``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from edgefleet.bounds import Timestamp
from edgefleet.wire import DeviceEventKind, Page, TelemetryAck, TelemetryReport
from registry import device_events, telemetry
from registry.db import write_session
from registry.models import DeviceEventPublic, TelemetryPublic
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import (
    AdminDep,
    DeviceDep,
    DevicePath,
    DeviceQuery,
    ModelQuery,
    Offset,
    SessionDep,
    VersionQuery,
    require_self,
)

router = APIRouter(tags=["telemetry"], responses=ADMIN_ERRORS, route_class=AuthFirstRoute)


@router.post(
    "/devices/{device_id}/telemetry",
    status_code=201,
    response_model=TelemetryAck,
    summary="Post a telemetry report (stored once per idempotency key)",
    responses={
        200: {"model": TelemetryAck, "description": "a retry: the report was already stored"},
        **error_responses(404, 409),
    },
)
def post_report(
    device_id: DevicePath,
    body: TelemetryReport,
    caller: DeviceDep,
    session: SessionDep,
    response: Response,
) -> TelemetryAck:
    """Validation and the duplicate check read outside the write transaction, which then only
    inserts (and notes the device's running version): on SQLite the write lock is held briefly."""
    require_self(caller, device_id)
    device = caller.device
    assert device is not None
    prepared = telemetry.prepare_report(session, device, body)
    if isinstance(prepared, TelemetryAck):
        ack = prepared
    else:
        session.commit()
        write_session(session)
        ack = telemetry.store_report(session, device, prepared, body.events)
        session.commit()
    if ack.duplicate:
        response.status_code = 200
    return ack


@router.get(
    "/telemetry",
    response_model=Page[TelemetryPublic],
    summary="Query telemetry",
    responses=error_responses(404),
)
def list_reports(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    version: VersionQuery = None,
    device: DeviceQuery = None,
    since: Annotated[Timestamp | None, Query(description="windows ending at or after")] = None,
    until: Annotated[Timestamp | None, Query(description="windows starting at or before")] = None,
    limit: Annotated[int, Query(ge=1, le=telemetry.MAX_PAGE)] = 1000,
    offset: Offset = 0,
) -> Page[TelemetryPublic]:
    return telemetry.list_reports(
        session,
        model=model,
        version=version,
        device=device,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/telemetry/events",
    response_model=Page[DeviceEventPublic],
    summary="Query device events (model switches, failed smoke tests, crashes, rollbacks)",
    responses=error_responses(404),
)
def list_events(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    version: VersionQuery = None,
    device: DeviceQuery = None,
    kind: Annotated[DeviceEventKind | None, Query()] = None,
    since: Annotated[Timestamp | None, Query(description="events at or after")] = None,
    until: Annotated[Timestamp | None, Query(description="events before")] = None,
    limit: Annotated[int, Query(ge=1, le=device_events.MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> Page[DeviceEventPublic]:
    """Newest first."""
    return device_events.list_events(
        session, model=model, version=version, device=device, kind=kind, since=since,
        until=until, limit=limit, offset=offset,
    )
