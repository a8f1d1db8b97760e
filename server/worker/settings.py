"""Worker settings: environment variables prefixed ``EDGEFLEET_WORKER_`` (or a dotenv file).

The database and the artifact store are the server's (``EDGEFLEET_SERVER_DATABASE_URL``,
``EDGEFLEET_SERVER_ARTIFACT_DIR``, see :mod:`server.settings`); what is here is the broker side.
``edgefleet server worker`` options override these.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.ondemand import DEFAULT_BROKER_URL, Streams

__all__ = ["WorkerSettings", "default_consumer", "load_worker_settings"]


def default_consumer() -> str:
    """``<host>-<pid>``: unique per process, so a restarted worker is a new consumer."""
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Configuration of one broker worker process.

    Parameters
    ----------
    broker_url
        ``redis://host:6379/0`` (default, Redis Streams) or ``nats://host:4222`` (JetStream).
    stream_prefix
        Streams are ``<prefix>.<model>.requests|results|dead`` (default ``edgefleet``).
    group
        Consumer group shared by the workers of one model (default ``edgefleet-workers``).
    consumer
        This worker's name in the group (default ``<host>-<pid>``).
    max_batch, max_wait_ms
        Most requests per batch (32) and longest wait for a batch to fill (5 ms).
    claim_idle_s
        Take over requests another consumer left unacknowledged this long (30 s); on JetStream
        the consumer's ack wait.
    max_deliveries
        Dead-letter a request delivered more often than this (5).
    refresh_s
        Resolve the followed alias again this often (2 s).
    result_ttl_s
        Keep each result (and refuse a second one for its request id) this long (1 day on
        Redis; JetStream's duplicate window, default 600 s).
    """

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_WORKER_", extra="ignore", env_file_encoding="utf-8"
    )

    broker_url: str = DEFAULT_BROKER_URL
    stream_prefix: str = Field(default="edgefleet", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    group: str = Field(default="edgefleet-workers", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    consumer: str = Field(default_factory=default_consumer, max_length=128)
    max_batch: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=5.0, ge=0)
    claim_idle_s: float = Field(default=30.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    refresh_s: float = Field(default=2.0, gt=0)
    result_ttl_s: float = Field(default=86_400.0, gt=0)

    def streams(self, model: str) -> Streams:
        return Streams.for_model(model, self.stream_prefix)


def load_worker_settings(env_file: str | Path | None = None, **overrides: Any) -> WorkerSettings:
    """Settings from the environment and ``env_file``; ``None`` overrides are ignored."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return WorkerSettings(_env_file=env_file, **values)  # type: ignore[call-arg]
