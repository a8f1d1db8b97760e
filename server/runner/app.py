"""The runner's process: :func:`create_runner_app` builds its FastAPI app, :func:`serve` runs it.

Start-up fetches the serving snapshot (retried by the serving table's thread when the registry
is not reachable yet: the runner stays not ready until it has one), starts the table's refresh
thread and loads the production version of each model named in ``models``; only then is
``/v2/health/ready`` 200. Shutdown stops the thread, the interpreters' pool and the HTTP clients
(the registry's, and the one that forwards shadow-sampled requests: :mod:`server.runner.forward`).

**Draining** (:class:`DrainingServer`): the first SIGTERM (or SIGINT) marks the runner as
draining: ``/v2/health/ready`` answers 503 so the balancer (Kubernetes endpoints, a
health-checking proxy) stops choosing it, while requests are still answered for ``drain_s``
seconds. Then uvicorn stops listening, finishes the requests in flight and exits. A second
signal exits at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
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
from server.runner.forward import ShadowForwarder
from server.runner.routes import RunnerState, health_router, resolve, v2_router
from server.runner.settings import RunnerSettings, load_runner_settings
from server.runner.source import RestSource
from server.security import parse_keys

__all__ = ["DrainingServer", "create_runner_app", "serve"]

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
        forwarder=ShadowForwarder(settings.registry_url, timeout_s=settings.forward_timeout_s,
                                  verify=verify) if settings.forward_shadow else None,
    )


async def warm_up(state: RunnerState, models: list[str]) -> None:
    """Load each model's production version (the runner is ready once they are loaded)."""
    for model in models:
        try:
            await state.pool.get((await resolve(state, model, None)).served)
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
        if state.forwarder is not None:
            await state.forwarder.aclose()

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


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains for ``drain_s`` first."""

    def __init__(self, config: uvicorn.Config, state: RunnerState, drain_s: float) -> None:
        super().__init__(config)
        self.runner = state
        self.drain_s = drain_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.runner.draining:  # the second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.runner.draining = True
        log.info("runner: draining for %.1f s before stopping", self.drain_s)
        self._timer = threading.Timer(self.drain_s, self._stop)
        self._timer.daemon = True
        self._timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def serve(settings: RunnerSettings, host: str, port: int, **uvicorn_options: Any) -> None:
    """Serve the runner on ``host:port`` until signalled (see the module notes)."""
    app = create_runner_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=30, **uvicorn_options)
    DrainingServer(config, app.state.runner, settings.drain_s).run()
