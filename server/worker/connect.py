"""Which broker a URL names: :func:`open_broker` picks the implementation.

The interface (:mod:`server.worker.broker`) knows none of its implementations; this module sits
above both, so the imports run one way.
"""

from __future__ import annotations

from edgefleet.ondemand import NATS_DUPLICATE_WINDOW_S, Streams, broker_kind
from server.worker.broker import Broker

__all__ = ["open_broker"]


def open_broker(
    url: str,
    streams: Streams,
    *,
    group: str,
    consumer: str,
    claim_idle_s: float,
    result_ttl_s: float,
) -> Broker:
    """The broker for ``url`` (``redis://…`` or ``nats://…``), not yet set up."""
    if broker_kind(url) == "redis":
        from server.worker.redis_broker import RedisBroker

        return RedisBroker(url, streams, group, consumer, result_ttl_s=result_ttl_s)
    from server.worker.nats_broker import NatsBroker

    return NatsBroker(
        url,
        streams,
        group,
        consumer,
        ack_wait_s=claim_idle_s,
        duplicate_window_s=min(result_ttl_s, NATS_DUPLICATE_WINDOW_S),
    )
