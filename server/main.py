"""The application factory: :func:`create_app` builds the FastAPI app from settings.

Start-up (lifespan) migrates the database when ``auto_migrate`` is on and clears stale partial
uploads from the artifact store, loads the version-signing key, audits changed behaviour settings
(:mod:`server.settings_audit`) and starts the background scrub (:mod:`server.scrubber`), the
rollout controller (:mod:`server.rollouts`), the serving table's refresh
(:mod:`server.inference.table`) and the inference log's writer (:mod:`server.evidence.writer`);
shutdown writes what the log has queued, stops them and disposes of the connection pool.
In front of everything, the V2 inference fast path (:mod:`server.fastpath`) answers
``POST .../infer`` itself, with the request id, body limit, metrics and access log the
middlewares give every other request; those, from the outside in: the metrics (when on),
request ids and the access log, request body limits (uploads get ``max_upload_bytes``,
everything else ``max_request_bytes``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Scope

from edgefleet import __version__
from edgefleet.wire import VersionPublish
from registry import migrate
from registry.db import make_engine
from server.api.responses import add_component_schemas, document_errors
from server.api.router import api_router, dashboard_router, v2_health_router, v2_router
from server.api.routes.inference import COMPONENTS as inference_components
from server.api.routes.metrics import router as metrics_router
from server.deps import single_valued_query
from server.errors import install_error_handlers
from server.evidence.writer import inference_log_for
from server.fastpath import InferFastPath
from server.metrics import install as install_metrics
from server.middleware import BodyLimitMiddleware, RequestContextMiddleware
from server.proxy import ProxyHeaders
from server.rollouts import RolloutController
from server.scrubber import Scrubber, prepare_integrity
from server.settings import ServerSettings, load_settings
from server.settings_audit import record_settings_change
from server.state import AppState

__all__ = ["EdgeFleetApp", "create_app", "create_worker_app"]

#: Connections per process: at least the worker threads that may hold one (anyio's default 40).
POOL_SIZE = 20
_UPLOAD = re.compile(r"^/api/v1/models/[^/]+/versions/?$")

DESCRIPTION = """\
EdgeFleet's registry and server: versioned models with lineage and aliases, device enrolment,
assignment and artifact downloads, telemetry intake, and fallback inference in the Open
Inference Protocol (V2).

Credentials: `X-Admin-Key` (registry), `Authorization: Bearer <device token>` (devices),
`Authorization: Bearer <inference key>` (applications).
"""


class EdgeFleetApp(FastAPI):
    """FastAPI with the V2 inference fast path (:class:`server.fastpath.InferFastPath`) in front
    of its whole middleware stack (Starlette's own error handler included: an inference
    request passes no middleware's wrapped ``send``), and before that the client's address
    behind a trusted proxy (:class:`server.proxy.ProxyHeaders`)."""

    def build_middleware_stack(self) -> ASGIApp:
        return ProxyHeaders(InferFastPath(super().build_middleware_stack(), host=self))


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the application (nothing connects until it starts or serves a request)."""
    settings = settings or load_settings()
    engine = make_engine(settings.database_url, pool_size=POOL_SIZE)
    state = AppState.build(settings, engine)
    inference_log = inference_log_for(settings, engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await run_in_threadpool(migrate.upgrade, engine)
        await run_in_threadpool(state.store.cleanup_tmp)
        await run_in_threadpool(prepare_integrity, state)
        await run_in_threadpool(record_settings_change, settings, engine)
        # Stopped in reverse order, each even when a later one's stop raised: no background
        # thread outlives the app.
        async with AsyncExitStack() as stack:
            stack.callback(engine.dispose)
            stack.callback(Scrubber(state, settings.scrub_interval_s).start().stop)
            rollouts = RolloutController(engine, settings.rollout_tick_s).start()
            stack.push_async_callback(run_in_threadpool, rollouts.stop)
            if inference_log is not None:
                inference_log.start()
                stack.push_async_callback(run_in_threadpool, inference_log.stop)  # writes the queue
            await run_in_threadpool(state.serving.start)
            # serving stops first and hands the log what it still holds
            stack.push_async_callback(run_in_threadpool, state.serving.stop)
            yield

    app = EdgeFleetApp(
        title="EdgeFleet",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # No trailing-slash redirects: a redirect's Location is built from the request's Host
        # header, which a client (or a proxy that forwards it) can steer anywhere.
        redirect_slashes=False,
        dependencies=[Depends(single_valued_query)],
    )
    app.state.edgefleet = state
    app.state.inference_log = inference_log
    install_error_handlers(app)
    # the upload's ``metadata`` JSON field; the V2 infer body (read raw by its route)
    add_component_schemas(app, VersionPublish, *inference_components)
    document_errors(app)  # every status a route can answer, with its family's error body

    def limit_for(scope: Scope) -> int:
        if scope.get("method") == "POST" and _UPLOAD.match(scope.get("path", "")):
            return settings.max_upload_bytes
        return settings.max_request_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(RequestContextMiddleware)
    if settings.metrics_enabled:
        install_metrics(app, engine, state.drift_policy)
        app.include_router(metrics_router)
    # the V2 routes first: the hot path's request is matched before the registry API's routes
    app.include_router(v2_health_router)
    app.include_router(v2_router)
    app.include_router(api_router)
    app.include_router(dashboard_router)
    return app


def create_worker_app() -> FastAPI:
    """The application of one of several uvicorn worker processes (``--workers N``): a fresh
    interpreter, so the server's logging is configured here before :func:`create_app`."""
    from server.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, line_process=True)
    return create_app(settings)
