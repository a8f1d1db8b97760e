"""Devices: enrolment (with an enrolment token), listing, reading, labelling, revoking."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.bounds import Timestamp
from edgefleet.wire import EnrollRequest, EnrollResponse, Page
from registry import devices
from registry.db import write_session
from registry.errors import AuthenticationError, PermissionDeniedError
from registry.models import DevicePublic, DeviceUpdate
from registry.signing import current_key_info
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import (
    AdminDep,
    CallerDep,
    DevicePath,
    Limit,
    ModelQuery,
    Offset,
    SessionDep,
    StateDep,
    WriteSessionDep,
    require_self,
)
from server.scrubber import require_signer
from server.security import Caller, match_key

router = APIRouter(prefix="/devices", tags=["devices"], route_class=AuthFirstRoute)


@router.post(
    "/enroll",
    status_code=201,
    response_model=EnrollResponse,
    summary="Enrol a device",
    responses=error_responses(400, 401, 403, 404, 409, 503),
)
def enroll(
    body: EnrollRequest, caller: CallerDep, state: StateDep, session: SessionDep
) -> EnrollResponse:
    """Trade an enrolment token for a device token (shown once; only its hash is stored).

    A device id that is already enrolled is refused (409): the fleet's enrolment token must not
    let anyone take over a running device. To recover a re-imaged device, the operator
    re-enrols its id with an admin key (``X-Admin-Key``) *and* the enrolment token: the device
    gets a new token (the old one stops working) and keeps its labels unless new ones are given.
    The answer carries the version-signing key the device pins; while the server's key is not
    ready nothing is enrolled (503: retry).
    """
    if not state.enrollment_tokens:
        raise PermissionDeniedError("enrolment is disabled: no enrolment token is configured")
    key = match_key(body.enrollment_token, state.enrollment_tokens)
    if key is None:
        raise AuthenticationError("invalid enrolment token")
    actor = caller.label if caller.kind == "admin" else f"enrolment:{key.name}"
    signer = require_signer(state)  # before the write begins: it may write the key itself
    session.commit()  # end the authentication read
    write_session(session)
    device, token = devices.enroll(session, body, replace=caller.kind == "admin", actor=actor)
    session.commit()
    return EnrollResponse(device_id=device.id, device_token=token,
                          signing_key=current_key_info(session, signer))


@router.get(
    "",
    response_model=Page[DevicePublic],
    summary="List devices",
    responses={**ADMIN_ERRORS, **error_responses(404)},
)
def list_devices(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    seen_since: Timestamp | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DevicePublic]:
    return devices.list_devices(
        session, model=model, seen_since=seen_since, limit=limit, offset=offset
    )


def _public(session: SessionDep, device_id: str) -> DevicePublic:
    return devices.devices_public(session, [devices.get_device(session, device_id)])[0]


@router.get(
    "/{device_id}",
    response_model=DevicePublic,
    summary="Read a device",
    responses={**ADMIN_ERRORS, **error_responses(404)},
)
def get_device(device_id: DevicePath, caller: CallerDep, session: SessionDep) -> DevicePublic:
    _self_or_admin(caller, device_id)
    return _public(session, device_id)


@router.patch(
    "/{device_id}",
    response_model=DevicePublic,
    summary="Label a device or set its model",
    responses={**ADMIN_ERRORS, **error_responses(404)},
)
def update_device(
    device_id: DevicePath, body: DeviceUpdate, caller: AdminDep, session: WriteSessionDep
) -> DevicePublic:
    devices.update_device(session, device_id, body, actor=caller.label)
    session.commit()
    return _public(session, device_id)


@router.delete(
    "/{device_id}",
    response_model=DevicePublic,
    summary="Revoke a device's token",
    responses={**ADMIN_ERRORS, **error_responses(404)},
)
def revoke_device(
    device_id: DevicePath, caller: AdminDep, session: WriteSessionDep
) -> DevicePublic:
    devices.revoke_device(session, device_id, actor=caller.label)
    session.commit()
    return _public(session, device_id)


def _self_or_admin(caller: Caller, device_id: str) -> None:
    if caller.kind == "anonymous":
        raise AuthenticationError("a device token or an admin key is required")
    require_self(caller, device_id)
