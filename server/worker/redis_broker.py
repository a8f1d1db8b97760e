"""Redis Streams as the worker's broker (the default).

Why Redis by default: its streams have everything the worker needs in a handful of commands and
a single small server — consumer groups (``XREADGROUP``), a per-consumer pending-entries list
that survives a killed consumer and can be handed to another (``XPENDING`` + ``XCLAIM``), and
server-side scripts that make "write this result unless one exists" atomic, for as long as the
result is kept (JetStream's duplicate window is bounded in time and kept in the server's memory).
One round trip reads a whole batch, and ``redis-py`` is a small pure-Python dependency.

Layout (names from :class:`edgefleet.ondemand.Streams`):

``<requests>``         stream of ``{"data": <request JSON>}``; group ``group`` created at id 0
                       (requests published before any worker existed are served too)
``<results>``          stream of ``{"id": <request id>, "data": <result JSON>}``, trimmed to
                       about ``results_maxlen`` entries
``<results>:<id>``     the result of request ``id`` (expires after ``result_ttl_s``)
``<dead_letter>``      stream of ``{"data", "reason", "message_id", "deliveries"}``

A result is written by :data:`WRITE_RESULT`: ``SET <results>:<id> NX`` and, only when that set
the key, ``XADD <results>`` — atomically, so a redelivered request whose result exists writes
nothing. Handled requests are acknowledged and deleted from the request stream together
(``MULTI``/``XACK``/``XDEL``): the request stream is a work queue.
"""

from __future__ import annotations

import time
from typing import Any

from edgefleet.ondemand import Streams
from server.worker.broker import Broker, BrokerError, DeadLetter, Delivery

__all__ = ["WRITE_RESULT", "RedisBroker"]

#: KEYS: result key, result stream. ARGV: result JSON, request id, ttl (s), stream max length.
WRITE_RESULT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[2], 'data', ARGV[1])
  return 1
end
return 0
"""


class RedisBroker(Broker):
    """A consumer ``consumer`` of group ``group`` on Redis Streams at ``url``."""

    def __init__(
        self,
        url: str,
        streams: Streams,
        group: str,
        consumer: str,
        *,
        result_ttl_s: float = 86_400.0,
        results_maxlen: int = 100_000,
    ) -> None:
        import redis.asyncio as aioredis

        super().__init__(streams, group, consumer)
        self.redis = aioredis.Redis.from_url(url)
        self.result_ttl_s = max(1, int(result_ttl_s))
        self.results_maxlen = results_maxlen
        self._script: Any = self.redis.register_script(WRITE_RESULT)
        self._own_pending_checked = False

    async def setup(self) -> None:
        from redis.exceptions import RedisError, ResponseError

        try:
            await self.redis.xgroup_create(self.streams.requests, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"cannot create consumer group {self.group!r}: {exc}") from exc
        except RedisError as exc:
            raise BrokerError(f"cannot reach Redis: {exc}") from exc

    async def read(self, max_batch: int, max_wait_s: float, block_s: float) -> list[Delivery]:
        got = await self._read(max_batch, block_s)
        if not got:
            return got
        deadline = time.monotonic() + max_wait_s
        while len(got) < max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = await self._read(max_batch - len(got), remaining)
            if not more:
                break
            got.extend(more)
        return got

    async def _read(self, count: int, block_s: float) -> list[Delivery]:
        reply: Any = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.streams.requests: ">"},
            count=count,
            block=max(1, int(block_s * 1000)),
        )
        return [
            Delivery(_text(entry_id), fields.get(b"data", b""), 1)
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def reclaim(self, min_idle_s: float, count: int) -> list[Delivery]:
        """Pending requests idle for ``min_idle_s`` (this consumer's own at once, the first time:
        they were left by an earlier process of the same name)."""
        pending: Any = []
        idle_ms = int(min_idle_s * 1000)
        if not self._own_pending_checked:
            self._own_pending_checked = True
            pending = await self.redis.xpending_range(
                self.streams.requests, self.group, "-", "+", count, consumername=self.consumer
            )
            if pending:
                idle_ms = 0
        if not pending:
            pending = await self.redis.xpending_range(
                self.streams.requests, self.group, "-", "+", count, idle=idle_ms
            )
        if not pending:
            return []
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        claimed: Any = await self.redis.xclaim(
            self.streams.requests,
            self.group,
            self.consumer,
            min_idle_time=idle_ms,
            message_ids=list(counts),
        )
        out = []
        for entry_id, fields in claimed:
            mid = _text(entry_id)
            out.append(Delivery(mid, (fields or {}).get(b"data", b""), counts.get(mid, 0) + 1))
        return out

    async def write_results(self, results: list[tuple[str, bytes]]) -> int:
        if not results:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id, data in results:
                await self._script(
                    keys=[f"{self.streams.results}:{request_id}", self.streams.results],
                    args=[data, request_id, self.result_ttl_s, self.results_maxlen],
                    client=pipe,
                )
            written = await pipe.execute(raise_on_error=True)
        return sum(int(w) for w in written)

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                d = letter.delivery
                pipe.xadd(
                    self.streams.dead_letter,
                    {
                        "data": d.data,
                        "reason": letter.reason,
                        "message_id": d.message_id,
                        "deliveries": d.deliveries,
                        "consumer": self.consumer,
                    },
                )
            await pipe.execute(raise_on_error=True)

    async def ack(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        ids = [d.message_id for d in deliveries]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.streams.requests, self.group, *ids)
            pipe.xdel(self.streams.requests, *ids)
            await pipe.execute(raise_on_error=True)

    async def close(self) -> None:
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
