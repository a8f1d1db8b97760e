"""Versions: upload (verified), list, search, read, archive (admin).

The upload is ``multipart/form-data``:

``metadata``        :class:`edgefleet.wire.VersionPublish` as JSON (optional; default ``{}``)
``weights``         the safetensors file, with ``weights_sha256`` (required)
``plan``            the ``.tflite`` plan, with ``plan_sha256``   } both, or neither (weights-only:
``manifest``        its ``manifest.json`` (``manifest_sha256``   } the plan of
                    optional)                                    } ``plan_from_version``/parent)

The admin key is checked *before* the body is read. Each file is streamed into the store's
temporary area while hashing, refused at once past the size limit (413) or on a digest mismatch
(400), then verified as a whole (:mod:`registry.publish`; 422 when the plan does not load or the
files do not belong together). Nothing is stored unless everything passes, and nothing while the
server's signing key is not ready (503, :func:`server.scrubber.require_signer`): every version
is signed as it is stored.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from edgefleet.bounds import QueryText
from edgefleet.wire import Page, VersionInfo, VersionPublish
from registry import search, versions
from registry.db import write_session
from registry.errors import ArtifactTooLargeError, DigestMismatchError, InvalidQueryError
from registry.models import VersionStatus, VersionStatusUpdate
from registry.publish import UploadedArtifacts, publish_version
from server.api.responses import ADMIN_ERRORS, error_responses
from server.api.routing import AuthFirstRoute
from server.deps import (
    AdminDep,
    Limit,
    ModelPath,
    ModelQuery,
    Offset,
    SessionDep,
    StateDep,
    VersionPath,
    WriteSessionDep,
)
from server.scrubber import require_signer
from server.security import Caller
from server.state import AppState

router = APIRouter(tags=["versions"], responses=ADMIN_ERRORS, route_class=AuthFirstRoute)

_FILE = {"type": "string", "format": "binary"}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["weights", "weights_sha256"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/VersionPublish"},
                            "description": "a VersionPublish object as JSON (default {})",
                        },
                        "weights": _FILE,
                        "weights_sha256": _SHA,
                        "plan": _FILE,
                        "plan_sha256": _SHA,
                        "manifest": _FILE,
                        "manifest_sha256": _SHA,
                    },
                }
            }
        },
    }
}
#: Largest text field (the metadata JSON, which may carry a fleet drift summary).
MAX_METADATA_BYTES = 16 * 1024 * 1024
_FIELDS = {
    "metadata",
    "weights",
    "weights_sha256",
    "plan",
    "plan_sha256",
    "manifest",
    "manifest_sha256",
}


@router.post(
    "/models/{model}/versions",
    status_code=201,
    response_model=VersionInfo,
    summary="Upload a new version (verified before it becomes READY)",
    openapi_extra=UPLOAD_SCHEMA,
    responses=error_responses(400, 404, 409, 413, 422, 503),
)
async def upload_version(
    model: ModelPath, request: Request, caller: AdminDep, state: StateDep
) -> VersionInfo:
    """Upload a version as ``multipart/form-data`` and publish it once verified.

    Fields: ``metadata``, a [VersionPublish](#/components/schemas/VersionPublish) object as JSON
    (description, metrics, lineage such as ``parent_version`` or ``plan_from_version``;
    default ``{}``; move aliases afterwards with ``PUT /api/v1/models/{model}/aliases/{alias}``);
    ``weights`` (safetensors) with ``weights_sha256``;
    optionally ``plan`` (.tflite) with ``plan_sha256`` and ``manifest`` (JSON) with
    ``manifest_sha256``. Each file must hash to its declared sha256 (400 naming the file),
    fit the upload limit (413) and belong with the others (422). While the server's signing key
    is not ready nothing is stored (503: retry).
    """
    try:
        form = await request.form(
            max_files=3, max_fields=len(_FIELDS), max_part_size=MAX_METADATA_BYTES
        )
    except FormParserError as exc:
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    try:
        return await run_in_threadpool(_publish, state, model, form, caller)
    finally:
        await form.close()


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidQueryError(f"form field {name!r} must be text, not a file")
    return value


def _file(form: FormData, name: str) -> UploadFile | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, UploadFile):
        raise InvalidQueryError(f"form field {name!r} must be a file")
    return value


def _publish(state: AppState, model: str, form: FormData, caller: Caller) -> VersionInfo:
    unknown = sorted(set(form.keys()) - _FIELDS)
    if unknown:
        raise InvalidQueryError(f"unknown form fields {unknown}")
    signer = require_signer(state)
    try:
        meta = VersionPublish.model_validate_json(_text(form, "metadata") or "{}")
    except ValidationError as exc:  # the usual validation answer, located in the form field
        raise RequestValidationError(
            [
                {**err, "loc": ("body", "metadata", *err["loc"])}
                for err in exc.errors(include_url=False, include_input=False)
            ]
        ) from None
    files = {name: _file(form, name) for name in ("weights", "plan", "manifest")}
    weights = files["weights"]
    if weights is None:
        raise InvalidQueryError("the weights file is required")
    limit = state.settings.max_upload_bytes
    with state.store.staging() as staging:
        staged = {}
        for name, upload in files.items():
            if upload is None:
                if _text(form, f"{name}_sha256") is not None:
                    raise InvalidQueryError(f"{name}_sha256 given without a {name} file")
                continue
            declared = _text(form, f"{name}_sha256")
            if declared is None and name != "manifest":
                raise InvalidQueryError(f"declare the {name} file's digest in {name}_sha256")
            try:
                staged[name] = staging.stage(
                    upload.file, expected_sha256=declared, max_bytes=limit
                )
            except (DigestMismatchError, ArtifactTooLargeError) as exc:
                raise type(exc)(f"{name} file: {exc}") from None
        artifacts = UploadedArtifacts(
            weights=staged["weights"], plan=staged.get("plan"), manifest=staged.get("manifest")
        )
        with Session(state.engine, expire_on_commit=False) as session:
            write_session(session)
            version = publish_version(
                session,
                state.store,
                model,
                meta,
                artifacts,
                actor=caller.label,
                interpreter=state.settings.interpreter,
                signer=signer,
            )
            session.commit()
            return versions.version_info(session, version)


@router.get(
    "/models/{model}/versions",
    response_model=Page[VersionInfo],
    summary="List a model's versions",
    responses=error_responses(404),
)
def list_versions(
    model: ModelPath,
    _: AdminDep,
    session: SessionDep,
    status: VersionStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[VersionInfo]:
    return versions.list_versions(session, model, status=status, limit=limit, offset=offset)


@router.get(
    "/models/{model}/versions/{version}",
    response_model=VersionInfo,
    summary="Read a version",
    responses=error_responses(404),
)
def get_version(
    model: ModelPath, version: VersionPath, _: AdminDep, session: SessionDep
) -> VersionInfo:
    return versions.version_info(session, versions.get_version(session, model, version))


@router.patch(
    "/models/{model}/versions/{version}",
    response_model=VersionInfo,
    summary="Archive a version (or bring it back)",
    responses=error_responses(404, 409),
)
def change_status(
    model: ModelPath,
    version: VersionPath,
    body: VersionStatusUpdate,
    caller: AdminDep,
    session: WriteSessionDep,
) -> VersionInfo:
    row = versions.change_status(session, model, version, body, actor=caller.label)
    session.commit()
    return versions.version_info(session, row)


@router.get(
    "/versions",
    response_model=Page[VersionInfo],
    summary="Search versions",
    responses=error_responses(422),
)
def search_versions(
    _: AdminDep,
    session: SessionDep,
    model: ModelQuery = None,
    task: QueryText | None = None,
    tag: QueryText | None = None,
    alias: QueryText | None = None,
    status: VersionStatus | None = None,
    metric: Annotated[
        list[QueryText], Query(description="thresholds such as accuracy>=0.9 (repeatable)")
    ] = [],  # noqa: B006 - FastAPI copies defaults
    federated_run: QueryText | None = None,
    sort: Annotated[QueryText | None, Query(description="a metric: best first")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[VersionInfo]:
    return search.search_versions(
        session,
        model=model,
        task=task,
        tag=tag,
        alias=alias,
        status=status,
        metrics=metric,
        federated_run=federated_run,
        sort=sort,
        limit=limit,
        offset=offset,
    )
