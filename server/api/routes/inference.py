"""Fallback inference in the Open Inference Protocol (V2) REST format.

``GET /v2`` (server metadata), ``GET /v2/models/{m}[/versions/{v}]`` (model metadata),
``GET .../ready``, ``POST .../infer``. Without a version the model's ``production`` alias
answers; the response's ``model_version`` names the version that did (and ``parameters.alias``
the alias). Errors carry ``{"error": "..."}``: 400 for a malformed request (invalid JSON, wrong
tensor name, shape, datatype or values), 404 for an unknown model or version, 413 for an
oversized body. Callers need a device token, an admin key or an inference key, unless the
server runs with ``public_inference``.

Each request records ``model`` and ``model_version`` on ``request.state`` for the access log;
each inference is logged (:func:`server.evidence.capture.logged_predict`).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlmodel import Session

from edgefleet.bounds import DB_INT_MAX
from edgefleet.v2 import InferenceRequest, InferenceResponse, V2Error
from registry.errors import AuthenticationError, NotFoundError
from server.api.routing import AuthFirstRoute
from server.deps import CallerDep, ModelPath, SessionDep, StateDep
from server.evidence.capture import logged_predict
from server.inference.service import Target
from server.security import Caller
from server.state import AppState

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error},
    401: {"model": V2Error},
    404: {"model": V2Error},
    413: {"model": V2Error},
}


async def require_inference_caller(caller: CallerDep, state: StateDep) -> Caller:
    if caller.kind == "anonymous" and not state.settings.public_inference:
        raise AuthenticationError(
            "inference needs a device token, an admin key or an inference key (Bearer)"
        )
    return caller


router = APIRouter(
    prefix="/v2",
    tags=["inference (V2)"],
    responses=ERRORS,
    dependencies=[Depends(require_inference_caller)],
    route_class=AuthFirstRoute,
)
#: A V2 version is a string; here it names a registry version, spelled canonically.
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")


def _number(version: str) -> int:
    """The registry version ``version`` names: 404 unless it is canonical (``3``, not ``03``)."""
    if not _VERSION.match(version) or int(version) > DB_INT_MAX:
        raise NotFoundError(
            f"unknown version {version[:20]!r}: versions are positive integers such as 3"
        )
    return int(version)


def _resolve(
    request: Request, session: Session, state: AppState, model: str, version: str | None
) -> Target:
    request.state.model = model
    target = state.inference.resolve(session, model, None if version is None else _number(version))
    request.state.model_version = target.version
    return target


def _json(payload: InferenceResponse) -> Response:
    return Response(payload.model_dump_json(exclude_none=True), media_type="application/json")


@router.get("", summary="Server metadata")
def server_metadata(state: StateDep) -> dict[str, Any]:
    return state.inference.server_metadata()


@router.get("/models/{model}", summary="Model metadata (production version)")
def model_metadata(
    model: ModelPath, request: Request, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    return state.inference.metadata(session, _resolve(request, session, state, model, None))


@router.get("/models/{model}/versions/{version}", summary="Model version metadata")
def version_metadata(
    model: ModelPath, version: str, request: Request, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    return state.inference.metadata(session, _resolve(request, session, state, model, version))


def _ready(
    request: Request, session: Session, state: AppState, model: str, version: str | None
) -> dict[str, Any]:
    target = _resolve(request, session, state, model, version)
    session.commit()
    state.inference.runtime(target)  # loads it (503 when its artifacts cannot be loaded)
    return {"name": model, "version": str(target.version), "ready": True}


@router.get("/models/{model}/ready", summary="Model readiness")
def model_ready(
    model: ModelPath, request: Request, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    return _ready(request, session, state, model, None)


@router.get("/models/{model}/versions/{version}/ready", summary="Model version readiness")
def version_ready(
    model: ModelPath, version: str, request: Request, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    return _ready(request, session, state, model, version)


@router.post(
    "/models/{model}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    summary="Inference on the production version",
)
def infer(
    model: ModelPath, body: InferenceRequest, request: Request, session: SessionDep, state: StateDep
) -> Response:
    target = _resolve(request, session, state, model, None)
    session.commit()  # release the database connection before running the model
    return _json(logged_predict(request, state.inference, target, body))


@router.post(
    "/models/{model}/versions/{version}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    summary="Inference on one version",
)
def infer_version(
    model: ModelPath,
    version: str,
    body: InferenceRequest,
    request: Request,
    session: SessionDep,
    state: StateDep,
) -> Response:
    target = _resolve(request, session, state, model, version)
    session.commit()
    return _json(logged_predict(request, state.inference, target, body))
