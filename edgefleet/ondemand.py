"""Model-on-demand through a message broker: the messages, the stream names, a client helper.

An application publishes a :class:`PredictionRequest` to a model's request stream; event
processors (``edgefleet server worker``, :mod:`server.worker`) read the stream in a consumer
group, batch requests, run the model and publish one :class:`PredictionResult` per request id to
the result stream, naming the version that computed it. Both sides import these definitions from
here, so the wire format is defined once.

Two brokers are supported, chosen by the URL's scheme:

``redis://host:6379/0`` (the default)
    Redis Streams. Requests are entries ``{"data": <request JSON>}`` of the stream
    :attr:`Streams.requests`; results are entries ``{"id": ..., "data": <result JSON>}`` of
    :attr:`Streams.results`, and each result is also kept under the key
    ``<results>:<request id>`` (which is what makes writing it idempotent, see
    :mod:`server.worker.redis_broker`).
``nats://host:4222``
    NATS JetStream. Requests are messages on the subject :attr:`Streams.requests` (header
    ``Nats-Msg-Id`` = request id, so a re-published request is dropped by the stream's duplicate
    window); results are messages on ``<results>.<request id>``.

:class:`OnDemandClient` is the helper for applications: ``request`` publishes and returns the
request id, ``await result(id)`` waits for its result. It needs the broker's client library
(``redis`` or ``nats-py``, the ``broker`` extra), imported only when a client connects; this
module itself imports only pydantic.

Example
-------
>>> async with OnDemandClient.connect(DEFAULT_BROKER_URL, "digits") as client:  # doctest: +SKIP
...     result = await client.result(await client.request([[0.0] * 64]))
...     print(result.labels, "by version", result.version)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from edgefleet.errors import EdgeFleetError

__all__ = [
    "DEFAULT_BROKER_URL",
    "MAX_ROWS",
    "REQUEST_ID_PATTERN",
    "OnDemandClient",
    "OnDemandError",
    "PredictionRequest",
    "PredictionResult",
    "ResultTimeout",
    "Streams",
    "broker_kind",
    "ensure_nats_streams",
    "nats_stream_name",
]

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: Request ids are safe as Redis key parts and as NATS subject tokens.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
#: Most rows one request may carry.
MAX_ROWS = 1024


class OnDemandError(EdgeFleetError):
    """A broker URL that names no supported broker, or a client used wrongly."""


class ResultTimeout(OnDemandError, TimeoutError):
    """No result arrived for a request within the time asked."""


class PredictionRequest(BaseModel):
    """One prediction request: ``inputs`` is ``[n, n_features]`` raw features (1 ≤ n ≤ 1024)."""

    id: str = Field(pattern=REQUEST_ID_PATTERN)
    inputs: list[list[float]] = Field(min_length=1, max_length=MAX_ROWS)


class PredictionResult(BaseModel):
    """The result of one request, named by the version that computed it.

    ``error`` is set (and ``labels``/``probabilities`` empty) when the request could not be run
    (for example rows of the wrong width); such requests also go to the dead-letter stream.
    """

    id: str
    model: str
    version: int | None
    alias: str | None = None
    labels: list[str] = Field(default_factory=list)
    probabilities: list[list[float]] = Field(default_factory=list)
    error: str | None = None
    worker: str
    computed_at: datetime


@dataclass(frozen=True)
class Streams:
    """The names of a model's request, result and dead-letter streams."""

    requests: str
    results: str
    dead_letter: str

    @classmethod
    def for_model(cls, model: str, prefix: str = "edgefleet") -> Streams:
        """``<prefix>.<model>.requests``, ``….results`` and ``….dead``."""
        base = f"{prefix}.{model}"
        return cls(f"{base}.requests", f"{base}.results", f"{base}.dead")


def broker_kind(url: str) -> str:
    """``redis`` or ``nats`` from the URL's scheme; :class:`OnDemandError` otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("nats", "tls"):
        return "nats"
    raise OnDemandError(f"unsupported broker URL {url!r}: use redis://… or nats://…")


class _Transport(Protocol):
    async def publish(self, request: PredictionRequest) -> None: ...
    async def lookup(self, request_id: str) -> PredictionResult | None: ...
    async def close(self) -> None: ...


class OnDemandClient:
    """Publish prediction requests and await their results (see the module notes).

    Build it with :meth:`connect` (an async context manager). Results are read by one background
    task from the moment the client connects and handed to whoever awaits them; a result awaited
    for a request another client made is looked up in the broker's store.
    """

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self._waiting: dict[str, asyncio.Future[PredictionResult]] = {}
        self._transport: _Transport | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, model: str, *, streams: Streams | None = None
    ) -> AsyncIterator[OnDemandClient]:
        """A connected client for ``model``'s streams (default :meth:`Streams.for_model`)."""
        client = cls(streams or Streams.for_model(model))
        kind = broker_kind(url)
        if kind == "redis":
            client._transport = await _RedisTransport.open(url, client)
        else:
            client._transport = await _NatsTransport.open(url, client)
        try:
            yield client
        finally:
            await client._transport.close()
            for fut in client._waiting.values():
                fut.cancel()

    def _future(self, request_id: str) -> asyncio.Future[PredictionResult]:
        fut = self._waiting.get(request_id)
        if fut is None:
            fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return fut

    def _deliver(self, data: bytes | str) -> None:
        """Called by the transport with every result it reads."""
        result = PredictionResult.model_validate_json(data)
        fut = self._waiting.get(result.id)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def request(
        self, inputs: Sequence[Sequence[float]], request_id: str | None = None
    ) -> str:
        """Publish one request (rows of raw features); its id (a new uuid unless given)."""
        if self._transport is None:
            raise OnDemandError("the client is not connected (use OnDemandClient.connect)")
        req = PredictionRequest(
            id=request_id or uuid.uuid4().hex,
            inputs=[[float(v) for v in row] for row in inputs],
        )
        self._future(req.id)
        await self._transport.publish(req)
        return req.id

    async def result(self, request_id: str, timeout: float = 30.0) -> PredictionResult:
        """The result of ``request_id``, waiting at most ``timeout`` seconds."""
        if self._transport is None:
            raise OnDemandError("the client is not connected (use OnDemandClient.connect)")
        fut = self._future(request_id)
        if not fut.done():
            stored = await self._transport.lookup(request_id)
            if stored is not None and not fut.done():
                fut.set_result(stored)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ResultTimeout(f"no result for request {request_id} in {timeout:g} s") from None
        finally:
            if fut.done():
                self._waiting.pop(request_id, None)

    async def predict(
        self, inputs: Sequence[Sequence[float]], timeout: float = 30.0
    ) -> PredictionResult:
        """``request`` then ``result``."""
        return await self.result(await self.request(inputs), timeout)


class _RedisTransport:
    """Redis Streams: XADD requests; one task XREADs the result stream from connect time."""

    #: Longest block of one XREAD (s): how soon the reader notices :meth:`close`.
    POLL_S = 0.25
    #: Connections to Redis of one client (the result reader holds one).
    MAX_CONNECTIONS = 16

    def __init__(self, redis: Any, client: OnDemandClient) -> None:
        self.redis, self.client = redis, client
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, url: str, client: OnDemandClient) -> _RedisTransport:
        import redis.asyncio as aioredis

        # many concurrent requests wait for a connection rather than fail
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=cls.MAX_CONNECTIONS, timeout=30
        )
        self = cls(aioredis.Redis(connection_pool=pool), client)
        last = await self.redis.xrevrange(client.streams.results, count=1)
        start = last[0][0] if last else b"0-0"
        self._task = asyncio.create_task(self._read(start))
        return self

    async def _read(self, last: bytes) -> None:
        stream = self.client.streams.results
        block_ms = int(self.POLL_S * 1000)
        while not self._closing:
            batches = await self.redis.xread({stream: last}, count=512, block=block_ms)
            for _, entries in batches:
                for entry_id, fields in entries:
                    last = entry_id
                    self.client._deliver(fields[b"data"])

    async def publish(self, request: PredictionRequest) -> None:
        await self.redis.xadd(self.client.streams.requests, {"data": request.model_dump_json()})

    async def lookup(self, request_id: str) -> PredictionResult | None:
        data = await self.redis.get(f"{self.client.streams.results}:{request_id}")
        return None if data is None else PredictionResult.model_validate_json(data)

    async def close(self) -> None:
        # a blocked XREAD does not always give way to cancellation: let it return and stop
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5 * self.POLL_S + 1)
        await self.redis.aclose(close_connection_pool=True)


class _NatsTransport:
    """NATS JetStream: publish requests with ``Nats-Msg-Id``; subscribe to ``<results>.>``."""

    def __init__(self, nc: Any, client: OnDemandClient) -> None:
        self.nc, self.client = nc, client
        self.js = nc.jetstream()

    @classmethod
    async def open(cls, url: str, client: OnDemandClient) -> _NatsTransport:
        import nats

        self = cls(await nats.connect(url), client)
        await ensure_nats_streams(self.js, client.streams)

        async def on_result(msg: Any) -> None:
            client._deliver(msg.data)

        await self.nc.subscribe(f"{client.streams.results}.>", cb=on_result)
        return self

    async def publish(self, request: PredictionRequest) -> None:
        await self.js.publish(
            self.client.streams.requests,
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": request.id},
        )

    async def lookup(self, request_id: str) -> PredictionResult | None:
        from nats.js.errors import NotFoundError

        try:
            msg = await self.js.get_last_msg(
                nats_stream_name(self.client.streams.results),
                f"{self.client.streams.results}.{request_id}",
            )
        except NotFoundError:
            return None
        return PredictionResult.model_validate_json(msg.data)

    async def close(self) -> None:
        await self.nc.drain()


def nats_stream_name(subject: str) -> str:
    """The JetStream stream that holds ``subject`` (and ``subject.>``): dots become ``_``."""
    return subject.replace(".", "_").replace("*", "_").replace(">", "_")


#: How long JetStream remembers a message id to drop a re-published duplicate (seconds).
NATS_DUPLICATE_WINDOW_S = 600.0


async def ensure_nats_streams(
    js: Any, streams: Streams, *, duplicate_window_s: float = NATS_DUPLICATE_WINDOW_S
) -> None:
    """Create the JetStream streams of ``streams`` when missing (existing ones are kept).

    Requests are a work-queue stream (a message is gone once acknowledged); results a stream
    keeping the newest message per request subject; dead letters a plain stream. Whoever
    connects first (client or worker) creates them, with ``duplicate_window_s``.
    """
    from nats.js.api import RetentionPolicy, StreamConfig
    from nats.js.errors import NotFoundError

    configs = [
        StreamConfig(
            name=nats_stream_name(streams.requests),
            subjects=[streams.requests],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=duplicate_window_s,
        ),
        StreamConfig(
            name=nats_stream_name(streams.results),
            subjects=[f"{streams.results}.>"],
            duplicate_window=duplicate_window_s,
            max_msgs_per_subject=1,
        ),
        StreamConfig(
            name=nats_stream_name(streams.dead_letter), subjects=[streams.dead_letter]
        ),
    ]
    for config in configs:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
