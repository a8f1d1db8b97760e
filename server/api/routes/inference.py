"""Fallback inference in the Open Inference Protocol (V2) REST format.

``GET /v2`` (server metadata), ``GET /v2/models/{m}[/versions/{v}]`` (model metadata),
``GET .../ready``, ``POST .../infer``. Without a version the model's rollout (canary share, A/B
variant, blue-green switch) or else its ``production`` alias answers; the response's
``model_version`` names the version that did (and ``parameters.alias`` the alias or arm).
Errors carry ``{"error": "..."}``: 400 for a malformed request (invalid JSON, wrong tensor name,
shape, datatype or values), 404 for an unknown model or version, 413 for an oversized body.
Callers need a device token, an admin key or an inference key, unless the server runs with
``public_inference``.

The hot path touches no database: credentials, models, versions and aliases come from memory
(:class:`server.inference.serving.Serving`, its staleness bound in :mod:`server.inference.table`),
the body is read raw and decoded by :func:`edgefleet.v2.decode_request` (JSON with or without
``Content-Type``, or the binary tensor data extension), the rows run through the version's
micro-batcher, and the answer is encoded by :func:`edgefleet.v2.encode_prediction`. Each request
records ``model`` and ``model_version`` on ``request.state`` for the access log, and each answer
(or refusal, once resolved) goes to the inference log's queue (:mod:`server.evidence.writer`),
written by its own thread; a shadow version's answer is logged there too, never returned.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from edgefleet.v2 import InferenceRequest, InferenceResponse, V2Error
from registry.errors import AuthenticationError
from server.api.routing import AuthFirstRoute
from server.deps import InferenceCallerDep, ModelPath, StateDep
from server.inference.answer import answer, resolve_request
from server.inference.serving import Resolved
from server.security import Caller
from server.state import AppState

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error},
    401: {"model": V2Error},
    404: {"model": V2Error},
    413: {"model": V2Error},
}

#: The request body as OpenAPI describes it (the route reads the raw body itself: JSON with or
#: without Content-Type, or JSON and binary tensor data).
BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (Inference-Header-Content-Length bytes), then the "
                "inputs' binary data",
            },
        },
    }
}
#: Models the OpenAPI document must carry as components (the raw-body route declares none).
COMPONENTS = (InferenceRequest,)


async def require_inference_caller(caller: InferenceCallerDep, state: StateDep) -> Caller:
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
async def _resolve(request: Request, state: AppState, model: str, version: str | None
                   ) -> Resolved:
    return await resolve_request(state, request.scope.setdefault("state", {}), model, version)


@router.get("", summary="Server metadata")
async def server_metadata(state: StateDep) -> dict[str, Any]:
    return state.inference.server_metadata()


@router.get("/models/{model}", summary="Model metadata (production version)")
async def model_metadata(model: ModelPath, request: Request, state: StateDep) -> dict[str, Any]:
    return await state.serving.metadata(await _resolve(request, state, model, None))


@router.get("/models/{model}/versions/{version}", summary="Model version metadata")
async def version_metadata(
    model: ModelPath, version: str, request: Request, state: StateDep
) -> dict[str, Any]:
    return await state.serving.metadata(await _resolve(request, state, model, version))


async def _ready(request: Request, state: AppState, model: str, version: str | None
                 ) -> dict[str, Any]:
    resolved = await _resolve(request, state, model, version)
    await state.serving.manifest(resolved.version)  # loads it (503 when it cannot be loaded)
    return {"name": model, "version": str(resolved.version.number), "ready": True}


@router.get("/models/{model}/ready", summary="Model readiness")
async def model_ready(model: ModelPath, request: Request, state: StateDep) -> dict[str, Any]:
    return await _ready(request, state, model, None)


@router.get("/models/{model}/versions/{version}/ready", summary="Model version readiness")
async def version_ready(
    model: ModelPath, version: str, request: Request, state: StateDep
) -> dict[str, Any]:
    return await _ready(request, state, model, version)


@router.post(
    "/models/{model}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    summary="Inference (the rollout's or the production version)",
    openapi_extra=BODY,
)
async def infer(model: ModelPath, request: Request, state: StateDep) -> Response:
    body = await request.body()
    return await answer(request, state, body, lambda: _resolve(request, state, model, None))


@router.post(
    "/models/{model}/versions/{version}/infer",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    summary="Inference on one version",
    openapi_extra=BODY,
)
async def infer_version(
    model: ModelPath, version: str, request: Request, state: StateDep
) -> Response:
    body = await request.body()
    return await answer(request, state, body, lambda: _resolve(request, state, model, version))
