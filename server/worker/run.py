"""Run one worker process: settings in, a served stream out, until SIGTERM or SIGINT.

:func:`serve` builds what a :class:`~server.worker.processor.Worker` needs from the server's
settings (database, artifact store, interpreter) and the worker's (broker, batching), and runs it
on an asyncio loop. On SIGTERM/SIGINT the current batch is finished (answered and acknowledged)
before the process exits; on SIGKILL the unacknowledged batch is taken over by another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from registry.db import make_engine
from server.precompute.resolve import make_service
from server.settings import ServerSettings
from server.worker.connect import open_broker
from server.worker.processor import Worker, WorkerConfig, WorkerStats
from server.worker.settings import WorkerSettings

__all__ = ["serve"]

log = logging.getLogger("edgefleet.worker")


def worker_config(
    settings: WorkerSettings, model: str, version: int | None, alias: str | None
) -> WorkerConfig:
    return WorkerConfig(
        model=model,
        version=version,
        alias=alias,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        claim_idle_s=settings.claim_idle_s,
        max_deliveries=settings.max_deliveries,
        refresh_s=settings.refresh_s,
    )


async def serve_async(
    server: ServerSettings,
    settings: WorkerSettings,
    model: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stop: asyncio.Event | None = None,
) -> WorkerStats:
    """Serve ``model`` until ``stop`` is set (or a signal arrives); the worker's counters."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    engine = make_engine(server.database_url, pool_size=2)
    broker = open_broker(
        settings.broker_url,
        settings.streams(model),
        group=settings.group,
        consumer=settings.consumer,
        claim_idle_s=settings.claim_idle_s,
        result_ttl_s=settings.result_ttl_s,
    )
    worker = Worker(worker_config(settings, model, version, alias), broker, engine,
                    make_service(server))
    try:
        await worker.start()
        assert worker.target is not None
        log.info("worker %s serving %s version %s from %s", worker.name, model,
                 worker.target.version, settings.streams(model).requests)
        return await worker.run(stop)
    finally:
        await broker.close()
        engine.dispose()


def serve(
    server: ServerSettings,
    settings: WorkerSettings,
    model: str,
    *,
    version: int | None = None,
    alias: str | None = None,
) -> WorkerStats:
    """:func:`serve_async` on a new event loop (the ``edgefleet server worker`` command)."""
    return asyncio.run(serve_async(server, settings, model, version=version, alias=alias))
