"""Fixtures of the broker tests: real Redis (127.0.0.1:6379) and NATS JetStream (127.0.0.1:4222).

Every test gets its own stream prefix (``t<pid>_<uuid>``), so parallel runs never share a
stream, and its streams, keys and JetStream streams are deleted afterwards. ``served_model``
registers digits version 1 (``production``) and a retrained version 2 on the test's database.
When a broker is unreachable its tests fail with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from edgefleet.ondemand import Streams, nats_stream_name
from edgefleet.runtime import PlanRuntime
from edgefleet.wire import AliasMove
from registry.aliases import set_alias
from registry.db import session_scope
from registry.store import ArtifactStore
from server.precompute.resolve import make_service, resolve_target
from server.settings import ServerSettings
from tests.registry.support import PlanFiles, model_with_versions

REDIS_URL = os.environ.get("EDGEFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("EDGEFLEET_TEST_NATS_URL", "nats://127.0.0.1:4222")
BROKERS = {"redis": REDIS_URL, "nats": NATS_URL}


def _reachable(url: str) -> None:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"broker unreachable at {url} ({exc}): start it", pytrace=False)


@dataclass
class BrokerCase:
    """One test's broker: its URL, kind and unique streams."""

    kind: str
    url: str
    prefix: str
    model: str = "digits"

    @property
    def streams(self) -> Streams:
        return Streams.for_model(self.model, self.prefix)


async def _cleanup(case: BrokerCase) -> None:
    s = case.streams
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        keys = [k async for k in r.scan_iter(match=f"{case.prefix}.*", count=1000)]
        for lo in range(0, len(keys), 500):
            await r.delete(*keys[lo : lo + 500])
        await r.aclose()
        return
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(case.url)
    js = nc.jetstream()
    for name in (s.requests, s.results, s.dead_letter):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(nats_stream_name(name))
    await nc.close()


def make_case(kind: str) -> Iterator[BrokerCase]:
    url = BROKERS[kind]
    _reachable(url)
    case = BrokerCase(kind, url, f"t{os.getpid()}_{uuid.uuid4().hex[:10]}")
    yield case
    asyncio.run(_cleanup(case))


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerCase]:
    """Each broker in turn, with unique streams cleaned up afterwards."""
    yield from make_case(request.param)


@pytest.fixture
def redis_broker() -> Iterator[BrokerCase]:
    yield from make_case("redis")


@dataclass
class ServedModel:
    """digits v1 (production) and v2 on the test database; their runtimes for expectations."""

    settings: ServerSettings
    engine: Engine
    v1: PlanRuntime
    v2: PlanRuntime

    def move_production(self, version: int) -> None:
        with session_scope(self.engine, write=True) as session:
            set_alias(session, "digits", "production", AliasMove(version=version), actor="test")

    def expected(self, version: int, x: np.ndarray) -> np.ndarray:
        return (self.v1 if version == 1 else self.v2).predict(x)


@pytest.fixture
def served_model(
    engine: Engine, db_url: str, store: ArtifactStore, plan_files: PlanFiles, tmp_path: Path
) -> ServedModel:
    model_with_versions(engine, store, plan_files, seeds=(1,))
    settings = ServerSettings(database_url=db_url, artifact_dir=store.root, auto_migrate=False)
    served = ServedModel(settings, engine, None, None)  # type: ignore[arg-type]
    served.move_production(1)
    service = make_service(settings)
    with session_scope(engine) as session:
        t1 = resolve_target(session, "digits", version=1)
        t2 = resolve_target(session, "digits", version=2)
    served.v1, served.v2 = service.runtime(t1), service.runtime(t2)
    return served
