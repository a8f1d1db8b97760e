"""The broker seam of the worker: what an event processor needs from a message broker.

:class:`Broker` is the small interface :class:`server.worker.processor.Worker` drives; two
implementations exist, :class:`server.worker.redis_broker.RedisBroker` (Redis Streams, the
default) and :class:`server.worker.nats_broker.NatsBroker` (NATS JetStream).
:func:`server.worker.connect.open_broker`
picks one by the URL's scheme (see :func:`edgefleet.ondemand.broker_kind`).

The contract every implementation keeps:

* :meth:`Broker.read` returns new requests of the consumer group, at most ``max_batch``; it waits
  up to ``block_s`` for the first one, then at most ``max_wait_s`` more to fill the batch.
* A request read and not acknowledged is delivered again (to this or another consumer of the
  group) once it has been idle ``claim_idle_s``: :meth:`Broker.reclaim` hands such requests to a
  consumer (Redis), or the broker redelivers them itself (JetStream). So delivery is
  at-least-once; :attr:`Delivery.deliveries` counts the attempts.
* :meth:`Broker.write_results` is idempotent per request id: a result for an id that already has
  one is dropped (and counted), so a redelivered request never produces a second result.
* :meth:`Broker.ack` is called only after the results (and dead letters) of a batch are written.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from edgefleet.ondemand import Streams
from server.errors import ServerError

__all__ = ["Broker", "BrokerError", "DeadLetter", "Delivery"]


class BrokerError(ServerError):
    """The broker refused an operation or cannot be reached."""


@dataclass
class Delivery:
    """One request message as the broker delivered it.

    Attributes
    ----------
    message_id
        The broker's id of the message (a Redis entry id, a JetStream sequence).
    data
        The message body (the request's JSON, unparsed: it may be malformed).
    deliveries
        How many times it has been delivered, this time included.
    handle
        What the implementation needs to acknowledge it.
    """

    message_id: str
    data: bytes
    deliveries: int = 1
    handle: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class DeadLetter:
    """A request that cannot be served: its message and why."""

    delivery: Delivery
    reason: str


class Broker(abc.ABC):
    """A consumer of one request stream in one consumer group (see the module notes)."""

    def __init__(self, streams: Streams, group: str, consumer: str) -> None:
        self.streams = streams
        self.group = group
        self.consumer = consumer

    @abc.abstractmethod
    async def setup(self) -> None:
        """Create the streams and the consumer group when missing."""

    @abc.abstractmethod
    async def read(self, max_batch: int, max_wait_s: float, block_s: float) -> list[Delivery]:
        """New requests of the group (possibly none after ``block_s``)."""

    @abc.abstractmethod
    async def reclaim(self, min_idle_s: float, count: int) -> list[Delivery]:
        """Requests other consumers read but left unacknowledged for ``min_idle_s``."""

    @abc.abstractmethod
    async def write_results(self, results: list[tuple[str, bytes]]) -> int:
        """Publish ``(request id, result JSON)`` pairs; return how many were new."""

    @abc.abstractmethod
    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        """Copy refused requests (body and reason) to the dead-letter stream."""

    @abc.abstractmethod
    async def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge handled requests (they are not delivered again)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection."""

