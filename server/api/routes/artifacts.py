"""Artifact downloads: a version's plan, weights and manifest (devices and the operator).

Responses stream from the content-addressed store with ``ETag: "<sha256>"``; a request whose
``If-None-Match`` names that tag (or ``*``) gets 304 without a body. Artifacts never change, so
they may be cached for good (``Cache-Control: private, max-age=31536000, immutable``); range
requests are honoured, so an interrupted download can resume. A device may read only the version
it is assigned (403 otherwise); an admin key reads any version. Before a blob is sent it is
checked against its digest and size (re-hashed unless its file is unchanged since its last good
hash); a mismatch is never sent: 503, and the version is marked DAMAGED (audited as
``DOWNLOAD_ACTOR``). Devices get nothing
of a DAMAGED version (503); an admin key may still read its intact blobs, for inspection.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Response
from fastapi.responses import FileResponse
from sqlmodel import Session

from registry.assignment import check_download
from registry.catalog import get_model
from registry.errors import AuthenticationError, DamagedArtifactError, PermissionDeniedError
from registry.integrity import report_damage
from registry.models import VersionStatus
from registry.versions import get_version
from server.api.responses import ADMIN_ERRORS, error_responses
from server.deps import CallerDep, ModelPath, SessionDep, StateDep, VersionPath
from server.errors import ModelUnavailableError
from server.security import Caller
from server.state import AppState

router = APIRouter(
    prefix="/models/{model}/versions/{version}",
    tags=["artifacts"],
    responses={**ADMIN_ERRORS, **error_responses(404, 503)},
)

Kind = Literal["plan", "weights", "manifest"]
MEDIA_TYPES: dict[str, str] = {
    "plan": "application/octet-stream",
    "weights": "application/octet-stream",
    "manifest": "application/json",
}
#: The audit actor of a DAMAGED mark set by a download's re-hash.
DOWNLOAD_ACTOR = "system:download"
FILENAMES = {"plan": "plan.tflite", "weights": "weights.safetensors", "manifest": "manifest.json"}
CACHE_CONTROL = "private, max-age=31536000, immutable"


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``tag`` (weak comparison, RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate.strip('"') == tag.strip('"'):
            return True
    return False


def serve(
    kind: Kind,
    model: str,
    version: int,
    caller: Caller,
    session: Session,
    state: AppState,
    if_none_match: str | None,
) -> Response:
    if caller.kind == "anonymous":
        raise AuthenticationError("a device token or an admin key is required")
    if caller.kind not in ("admin", "device", "runner"):
        raise PermissionDeniedError("artifacts are for devices, runners and the operator")
    m = get_model(session, model)
    v = get_version(session, m, version)
    if caller.device is not None:
        check_download(session, caller.device, m, v)
    if caller.kind == "runner" and v.status != VersionStatus.READY:
        raise ModelUnavailableError(f"version {version} of {model!r} is {v.status.value}: "
                                    "runners get the artifacts of READY versions only")
    session.commit()  # release the connection before streaming
    sha = {"plan": v.plan_sha256, "weights": v.weights_sha256, "manifest": v.manifest_sha256}[kind]
    etag = f'"{sha}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    path = state.store.path(sha)
    if not path.is_file():
        raise ModelUnavailableError(f"the {kind} of version {version} of {model!r} is missing")
    size = {"plan": v.plan_size, "weights": v.weights_size, "manifest": v.manifest_size}[kind]
    problem = state.store.problem(sha, size, cached=True)
    if problem is not None:
        report_damage(state.engine, m.name, v.number, f"{kind} {sha[:12]}…: {problem}",
                      actor=DOWNLOAD_ACTOR)
        raise DamagedArtifactError(
            f"the {kind} of version {version} of {model!r} is damaged and is not served"
        )
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[kind],
        headers=headers,
        filename=f"{model}-v{version}-{FILENAMES[kind]}",
    )


IfNoneMatch = Annotated[str | None, Header()]


def _download_route(kind: Kind, summary: str) -> None:
    """Mount ``GET .../{kind}``: :func:`serve` that kind of artifact."""

    def download(
        model: ModelPath,
        version: VersionPath,
        caller: CallerDep,
        session: SessionDep,
        state: StateDep,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        return serve(kind, model, version, caller, session, state, if_none_match)

    router.add_api_route(
        f"/{kind}",
        download,
        methods=["GET"],
        name=f"download_{kind}",
        summary=summary,
        response_class=FileResponse,
    )


_download_route("plan", "Download the plan (.tflite)")
_download_route("weights", "Download the weights (safetensors)")
_download_route("manifest", "Download the plan manifest (JSON)")
