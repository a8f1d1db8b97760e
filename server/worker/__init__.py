"""Model-on-demand: broker workers that batch prediction requests and answer them.

Owns the event processor (:class:`Worker`), its broker seam (:class:`Broker`, with Redis Streams
and NATS JetStream implementations), its settings (``EDGEFLEET_WORKER_*``) and the process
runner behind ``edgefleet server worker``. The messages and stream names are the shared core's
(:mod:`edgefleet.ondemand`, which also holds the applications' client). May import: ``registry``,
the shared core, ``server.inference`` and ``server.precompute.resolve`` (to load versions as the
server does), numpy; ``redis`` or ``nats`` (the ``broker`` extra) only in the broker chosen.
"""

from server.worker.broker import Broker, BrokerError, DeadLetter, Delivery
from server.worker.connect import open_broker
from server.worker.processor import Worker, WorkerConfig, WorkerStats
from server.worker.settings import WorkerSettings, load_worker_settings

__all__ = [
    "Broker",
    "BrokerError",
    "DeadLetter",
    "Delivery",
    "Worker",
    "WorkerConfig",
    "WorkerSettings",
    "WorkerStats",
    "load_worker_settings",
    "open_broker",
]
