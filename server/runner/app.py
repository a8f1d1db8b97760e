"""The runner's application factory: :func:`create_runner_app` builds its FastAPI app.

Start-up fetches the serving snapshot (retried by the serving table's thread when the registry
is not reachable yet: the runner stays not ready until it has one), starts the table's refresh
thread and loads the production version of each model named in ``models``; only then is
``/v2/health/ready`` 200. Shutdown stops the thread, the interpreters' pool and the HTTP client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from edgefleet import __version__
from edgefleet.errors import EdgeFleetError
from server.errors import install_error_handlers
from server.inference.batcher import BatchPolicy
from server.inference.pool import RuntimePool
from server.inference.table import ServingTable
from server.middleware import BodyLimitMiddleware
from server.runner.client import ArtifactCache, RegistryClient
from server.runner.routes import health_router, resolve, v2_router
from server.runner.settings import RunnerSettings, load_runner_settings
from server.runner.source import RestSource
from server.runner.state import RunnerState
from server.security import parse_keys

__all__ = ["create_runner_app"]

log = logging.getLogger("edgefleet.runner")


def build_state(settings: RunnerSettings) -> RunnerState:
    verify: str | bool = str(settings.ca_file) if settings.ca_file else True
    client = RegistryClient(settings.registry_url, settings.runner_key.get_secret_value(),
                            timeout_s=settings.request_timeout_s, verify=verify)
    source = RestSource(client, ArtifactCache(settings.cache_dir, client),
                        settings.signing_public_keys)
    policy = BatchPolicy(max_batch=min(settings.max_batch, 4096))
    return RunnerState(
        settings=settings,
        source=source,
        table=ServingTable(source, refresh_interval_s=settings.refresh_interval_s),
        pool=RuntimePool(source, policy_for=lambda _model: policy, threads=settings.threads,
                         cache_size=settings.cache_size, interpreter=settings.interpreter),
        inference_keys=parse_keys(settings.inference_keys, "app"),
    )


async def warm_up(state: RunnerState, models: list[str]) -> None:
    """Load each model's production version (the runner is ready once they are loaded)."""
    for model in models:
        try:
            served, _ = await resolve(state, model, None)
            await state.pool.get(served)
        except EdgeFleetError as exc:
            log.error("runner: cannot load %s at start-up: %s", model, exc)
    state.warmed = True


def create_runner_app(settings: RunnerSettings | None = None) -> FastAPI:
    """Build the runner's application (nothing is fetched until it starts)."""
    settings = settings or load_runner_settings()
    state = build_state(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(state.source.poll)
        except EdgeFleetError as exc:
            log.error("runner: no serving snapshot yet (%s); retrying", exc)
        state.table.start()
        await warm_up(state, settings.models)
        yield
        state.table.stop()
        state.pool.close()
        state.source.client.close()

    app = FastAPI(title="EdgeFleet inference runner", version=__version__, lifespan=lifespan,
                  redirect_slashes=False)
    app.state.runner = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda _scope: settings.max_request_bytes)
    app.include_router(health_router)
    app.include_router(v2_router)
    if settings.metrics_enabled:
        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    return app
