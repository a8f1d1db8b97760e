"""The assignment poll: which version a device should run now (conditional, cheap to repeat).

The response's ``ETag`` is a digest of the assignment itself, so a device that sends it back in
``If-None-Match`` gets 304 until an alias moves (or its canary membership changes). Polls record
``last_seen`` (at most every ``last_seen_interval_s``) and the version handed out, which is
what the device may then download.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Response
from sqlmodel import Session

from edgefleet.wire import ArtifactRef, Assignment, PrefetchRef, artifact_url
from registry.assignment import assign
from registry.devices import get_device, touch
from registry.errors import AuthenticationError
from registry.models import ModelVersion
from registry.signing import signature_of
from server.api.responses import CALLER_ERRORS, error_responses
from server.api.routes.artifacts import etag_matches
from server.deps import (
    CallerDep,
    DevicePath,
    ModelQuery,
    SessionDep,
    SettingsDep,
    require_self,
)

router = APIRouter(
    prefix="/devices",
    tags=["assignment"],
    responses={**CALLER_ERRORS, **error_responses(404)},
)


def _side(session: Session, name: str, v: ModelVersion | None) -> PrefetchRef | None:
    """A version a rollout hands out beside the assignment (pre-download, shadow)."""
    if v is None:
        return None
    return PrefetchRef(
        version=v.number,
        plan=ArtifactRef(url=artifact_url(name, v.number, "plan"), sha256=v.plan_sha256,
                         size=v.plan_size),
        weights=ArtifactRef(url=artifact_url(name, v.number, "weights"),
                            sha256=v.weights_sha256, size=v.weights_size),
        manifest_url=artifact_url(name, v.number, "manifest"),
        manifest=ArtifactRef(url=artifact_url(name, v.number, "manifest"),
                             sha256=v.manifest_sha256, size=v.manifest_size),
        signature=signature_of(session, v),
    )


@router.get(
    "/{device_id}/assignment",
    response_model=Assignment,
    summary="The version this device should run",
    responses={304: {"description": "unchanged since the ETag sent in If-None-Match"}},
)
def get_assignment(
    device_id: DevicePath,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    if caller.kind == "anonymous":
        raise AuthenticationError("a device token is required (Authorization: Bearer efd_…)")
    require_self(caller, device_id)
    device = caller.device if caller.device is not None else get_device(session, device_id)
    choice = assign(session, device, model)
    v, name = choice.version, choice.model.name
    body = Assignment(
        device_id=device.id,
        model=name,
        version=v.number,
        alias=choice.alias,
        plan=ArtifactRef(
            url=artifact_url(name, v.number, "plan"), sha256=v.plan_sha256, size=v.plan_size
        ),
        weights=ArtifactRef(
            url=artifact_url(name, v.number, "weights"),
            sha256=v.weights_sha256,
            size=v.weights_size,
        ),
        manifest_url=artifact_url(name, v.number, "manifest"),
        manifest=ArtifactRef(
            url=artifact_url(name, v.number, "manifest"),
            sha256=v.manifest_sha256,
            size=v.manifest_size,
        ),
        signature=signature_of(session, v),
        poll_interval_s=settings.poll_interval_s,
        rollout_id=choice.rollout_id,
        variant=choice.variant,
        prefetch=_side(session, name, choice.prefetch),
        shadow=_side(session, name, choice.shadow),
    )
    content = body.model_dump_json()
    etag = f'"{hashlib.sha256(content.encode()).hexdigest()[:32]}"'
    session.commit()  # end the read; the write below starts a fresh transaction
    if caller.kind == "device":
        touch(
            session,
            device,
            assigned_version_id=v.id,
            min_interval=timedelta(seconds=settings.last_seen_interval_s),
        )
        session.commit()
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type="application/json", headers=headers)
