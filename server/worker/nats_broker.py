"""NATS JetStream as the worker's broker (``--broker nats://host:4222``).

Streams (see :func:`edgefleet.ondemand.ensure_nats_streams`): requests on a work-queue stream
read through one durable pull consumer named after the group (every worker of the group pulls
from it, so they split the stream); results on ``<results>.<request id>``; dead letters on
``<dead_letter>``. JetStream redelivers a message not acknowledged within the consumer's
``ack_wait`` (``claim_idle_s``) by itself, so :meth:`NatsBroker.reclaim` has nothing to do, and
:attr:`Delivery.deliveries` comes from the message's metadata. Results are published with the
header ``Nats-Msg-Id: <request id>``: within the results stream's duplicate window
(``duplicate_window_s``) a second result for the same id is dropped by the server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from edgefleet.ondemand import Streams, ensure_nats_streams, nats_stream_name
from server.worker.broker import Broker, BrokerError, DeadLetter, Delivery

__all__ = ["NatsBroker"]


class NatsBroker(Broker):
    """A member ``consumer`` of the durable pull consumer ``group`` on JetStream at ``url``."""

    def __init__(
        self,
        url: str,
        streams: Streams,
        group: str,
        consumer: str,
        *,
        ack_wait_s: float = 30.0,
        duplicate_window_s: float = 600.0,
    ) -> None:
        super().__init__(streams, group, consumer)
        self.url = url
        self.ack_wait_s = ack_wait_s
        self.duplicate_window_s = duplicate_window_s
        self.nc: Any = None
        self.js: Any = None
        self.sub: Any = None

    async def setup(self) -> None:
        import nats
        from nats.errors import Error as NatsError
        from nats.js.api import AckPolicy, ConsumerConfig

        try:
            self.nc = await nats.connect(self.url, name=self.consumer, connect_timeout=5,
                                         max_reconnect_attempts=3)
        except Exception as exc:  # nats raises several unrelated types for "cannot connect"
            raise BrokerError(f"cannot reach NATS at {self.url}: {exc}") from exc
        self.js = self.nc.jetstream()
        try:
            await ensure_nats_streams(
                self.js, self.streams, duplicate_window_s=self.duplicate_window_s
            )
            self.sub = await self.js.pull_subscribe(
                self.streams.requests,
                durable=self.group,
                stream=nats_stream_name(self.streams.requests),
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s, max_ack_pending=-1
                ),
            )
        except NatsError as exc:
            raise BrokerError(f"JetStream refused the streams or consumer: {exc}") from exc

    async def read(self, max_batch: int, max_wait_s: float, block_s: float) -> list[Delivery]:
        import time

        msgs = await self._fetch(max_batch, block_s)
        deadline = time.monotonic() + max_wait_s
        while msgs and len(msgs) < max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = await self._fetch(max_batch - len(msgs), remaining)
            if not more:
                break
            msgs.extend(more)
        return [
            Delivery(str(m.metadata.sequence.stream), m.data, int(m.metadata.num_delivered), m)
            for m in msgs
        ]

    async def _fetch(self, n: int, timeout: float) -> list[Any]:
        try:
            return list(await self.sub.fetch(n, timeout=max(timeout, 0.001)))
        except TimeoutError:  # nats.errors.TimeoutError derives from it
            return []

    async def reclaim(self, min_idle_s: float, count: int) -> list[Delivery]:
        return []  # JetStream redelivers after ack_wait by itself

    async def write_results(self, results: list[tuple[str, bytes]]) -> int:
        acks = await asyncio.gather(*(  # one round trip for the batch, not one per result
            self.js.publish(
                f"{self.streams.results}.{request_id}", data, headers={"Nats-Msg-Id": request_id}
            )
            for request_id, data in results
        ))
        return sum(0 if ack.duplicate else 1 for ack in acks)

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            d = letter.delivery
            await self.js.publish(
                self.streams.dead_letter,
                d.data,
                headers={
                    "Edgefleet-Reason": json.dumps(letter.reason)[1:-1][:1000],
                    "Edgefleet-Message-Id": d.message_id,
                    "Edgefleet-Deliveries": str(d.deliveries),
                    "Edgefleet-Consumer": self.consumer,
                },
            )

    async def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            await d.handle.ack()
        if deliveries:
            await self.nc.flush()

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
