"""The runner's routes (V2 inference, model metadata and readiness, health) and its state.

The same paths and bodies as the server's V2 family (``server/api/routes/inference.py``), with
the codec of :mod:`edgefleet.v2`; a request without a version is answered by the version the
model's active rollout routes this caller to (sticky per inference key), or else by its
``production`` alias, as the runner's serving table last saw them. A request that a shadow
rollout samples is sent on to the registry server, which answers it and logs both answers (a
runner keeps no inference log; :mod:`server.runner.forward`); the runner answers it itself only
when the server cannot. Request ids are the caller's ``X-Request-ID`` when it is sane (the
server's rule) and fresh ones otherwise. Callers present an inference key (``Authorization:
Bearer``) unless the runner runs with ``public_inference``. Errors are ``{"error": "..."}``
(:mod:`server.errors`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool

from edgefleet import v2
from edgefleet.bounds import path_version
from registry.errors import (
    AuthenticationError,
    DamagedArtifactError,
    NotFoundError,
    VersionNotReadyError,
)
from registry.rollouts.routing import ModelSnapshot, choose
from server.inference.pool import RuntimePool
from server.inference.source import ServedVersion
from server.inference.table import ServingTable
from server.middleware import REQUEST_ID
from server.runner.forward import ShadowForwarder
from server.runner.settings import RunnerSettings
from server.runner.source import RestSource
from server.security import NamedKey, match_key

__all__ = ["Resolved", "RunnerState", "health_router", "v2_router"]

PRODUCTION = "production"

REQUESTS = Counter("edgefleet_runner_inference_requests_total",
                   "V2 inference requests answered by this runner", ["model", "version", "status"])
LATENCY = Histogram("edgefleet_runner_inference_duration_seconds",
                    "V2 inference latency in this runner", ["model"])
SHADOW = Counter("edgefleet_runner_shadow_requests_total",
                 "Requests a shadow rollout sampled: forwarded to the server, answered here "
                 "because the server could not (fallback), or answered here with forwarding off",
                 ["model", "outcome"])


@dataclass
class RunnerState:
    """Per-process resources of a runner (:func:`server.runner.app.create_runner_app`)."""

    settings: RunnerSettings
    source: RestSource
    table: ServingTable
    pool: RuntimePool
    inference_keys: list[NamedKey] = field(default_factory=list)
    forwarder: ShadowForwarder | None = None
    warmed: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        """Serving: a snapshot is held, the configured models are loaded, no drain started."""
        return self.source.ready and self.warmed and not self.draining


def get_state(request: Request) -> RunnerState:
    state: RunnerState = request.app.state.runner
    return state


StateDep = Annotated[RunnerState, Depends(get_state)]


async def require_caller(request: Request, state: StateDep,
                         authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's key for sticky rollout arms: ``app:<key name>`` as on the server, or the
    client's address under ``public_inference``."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        key = match_key(secret.strip(), state.inference_keys)
        if key is not None:
            return f"app:{key.name}"
        if not state.settings.public_inference:
            raise AuthenticationError("invalid inference key")
    if state.settings.public_inference:
        return f"anonymous:{request.client.host if request.client else '-'}"
    raise AuthenticationError("inference needs an inference key (Authorization: Bearer)")


CallerKey = Annotated[str, Depends(require_caller)]


health_router = APIRouter(prefix="/v2/health", tags=["health"])
v2_router = APIRouter(prefix="/v2", tags=["inference (V2)"],
                      dependencies=[Depends(require_caller)])


@health_router.get("/live", summary="Liveness")
def live() -> dict[str, bool]:
    return {"live": True}


@health_router.get("/ready", summary="Readiness: a snapshot is held, warm-up done, not draining")
def ready(state: StateDep) -> JSONResponse:
    ok = state.ready
    return JSONResponse({"ready": ok, "draining": state.draining}, 200 if ok else 503)


@dataclass(frozen=True)
class Resolved:
    """Who answers a request: the READY version, the alias or arm that chose it (``None`` for a
    named version) and the shadow version the rollout copies this request to, if any."""

    served: ServedVersion
    alias: str | None
    shadow: int | None = None


async def resolve(state: RunnerState, model: str, version: str | None, *,
                  caller_key: str = "", request_key: str = "") -> Resolved:
    """The READY version to serve: ``version``, or the rollout's route for this caller and
    request (:func:`registry.rollouts.routing.choose`), which is the ``production`` alias when
    no rollout steers the model."""
    entry = state.table.cached(model) or await run_in_threadpool(state.table.entry, model)
    if entry is None:
        raise NotFoundError(f"unknown model {model[:100]!r}")
    shadow = None
    if version is None:
        if isinstance(entry.rollout, ModelSnapshot):
            route = choose(entry.rollout, caller_key=caller_key, request_key=request_key)
            number, alias, shadow = route.version, route.alias, route.shadow_version
        else:
            found = entry.aliases.get(PRODUCTION)
            if found is None:
                raise NotFoundError(f"model {model!r} has no production version; name a version")
            number, alias = found, PRODUCTION
    else:
        try:
            number, alias = path_version(version), None
        except ValueError as exc:
            raise NotFoundError(str(exc)) from None
    served = entry.versions.get(number)
    if served is None:
        raise NotFoundError(f"model {model!r} has no version {number}")
    if served.status == "DAMAGED":
        raise DamagedArtifactError(f"version {number} of {model!r} is DAMAGED and is not served")
    if served.status != "READY":
        raise VersionNotReadyError(f"version {number} of {model!r} is {served.status}, not READY")
    return Resolved(served, alias, shadow)


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-ID`` when the server would keep it, else a fresh one."""
    return given if given and REQUEST_ID.match(given) else uuid.uuid4().hex


async def _infer(request: Request, state: RunnerState, caller: str, model: str,
                 version: str | None) -> Response:
    started = time.perf_counter()
    status = "error"
    number = version or "-"
    try:
        request_key = request_id(request.headers.get("x-request-id"))
        resolved = await resolve(state, model, version, caller_key=caller,
                                 request_key=request_key)
        served, alias = resolved.served, resolved.alias
        number = str(served.number)
        body = await request.body()
        decoded = v2.decode_request(body, request.headers)
        if resolved.shadow is not None:
            forwarded = await _forward_shadow(request, state, model, body, request_key)
            if forwarded is not None:
                status = "ok" if forwarded.status_code < 400 else "error"
                return forwarded
        batcher = await state.pool.get(served)
        manifest = batcher.manifest
        names = v2.requested_outputs(decoded.outputs, manifest.output.name)
        x = v2.decode_input(decoded.inputs, manifest, max_batch=state.settings.max_batch)
        probs = await batcher.predict(x)
        labels = v2.predicted_labels(probs, manifest.output.class_labels)
        content, headers = v2.encode_prediction(
            decoded, probs, labels, output_name=manifest.output.name, names=names,
            model_name=model, model_version=number,
            parameters={"alias": alias} if alias else None)
        headers["x-request-id"] = request_key
        status = "ok"
        return Response(content, headers=headers)
    finally:
        REQUESTS.labels(model, number, status).inc()
        LATENCY.labels(model).observe(time.perf_counter() - started)


async def _forward_shadow(request: Request, state: RunnerState, model: str, body: bytes,
                          request_key: str) -> Response | None:
    """The server's answer to a shadow-sampled request, or ``None`` to answer it here."""
    if state.forwarder is None:
        SHADOW.labels(model, "off").inc()
        return None
    forwarded = await state.forwarder.forward(request.url.path, body, request.headers,
                                              request_key)
    SHADOW.labels(model, "forwarded" if forwarded is not None else "fallback").inc()
    return forwarded


async def _metadata(state: RunnerState, model: str, version: str | None) -> dict[str, Any]:
    resolved = await resolve(state, model, version)
    served, alias = resolved.served, resolved.alias
    entry = state.table.cached(model) or await run_in_threadpool(state.table.entry, model)
    ready_versions = sorted(n for n, v in (entry.versions.items() if entry else ())
                            if v.status == "READY")
    batcher = await state.pool.get(served)
    return v2.model_metadata(model, ready_versions, batcher.manifest,
                             version=str(served.number), alias=alias)


async def _ready(state: RunnerState, model: str, version: str | None) -> dict[str, Any]:
    served = (await resolve(state, model, version)).served
    await state.pool.get(served)  # loads it (503 when its artifacts are refused)
    return {"name": model, "version": str(served.number), "ready": True}


@v2_router.get("", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return v2.server_metadata()


@v2_router.get("/models/{model}", summary="Model metadata (production version)")
async def model_metadata(model: str, state: StateDep) -> dict[str, Any]:
    return await _metadata(state, model, None)


@v2_router.get("/models/{model}/versions/{version}", summary="Model version metadata")
async def version_metadata(model: str, version: str, state: StateDep) -> dict[str, Any]:
    return await _metadata(state, model, version)


@v2_router.get("/models/{model}/ready", summary="Model readiness")
async def model_ready(model: str, state: StateDep) -> dict[str, Any]:
    return await _ready(state, model, None)


@v2_router.get("/models/{model}/versions/{version}/ready", summary="Model version readiness")
async def version_ready(model: str, version: str, state: StateDep) -> dict[str, Any]:
    return await _ready(state, model, version)


@v2_router.post("/models/{model}/infer", summary="Inference on the production version")
async def infer(model: str, request: Request, state: StateDep, caller: CallerKey
                ) -> Response:
    return await _infer(request, state, caller, model, None)


@v2_router.post("/models/{model}/versions/{version}/infer", summary="Inference on one version")
async def infer_version(model: str, version: str, request: Request, state: StateDep,
                        caller: CallerKey) -> Response:
    return await _infer(request, state, caller, model, version)
