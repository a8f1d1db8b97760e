"""Prometheus metrics of the aggregation: rounds, replies, refused updates, controller decisions.

``edgefleet_fl_rounds_total{status}``                 finished rounds, ``ok`` or ``failed``
``edgefleet_fl_round_duration_seconds{status}``       wall time of a round, query to publish
``edgefleet_fl_replies_total{kind}``                  train replies per round by kind: ``replied``
                                                      (an update), ``declined``, ``straggler``
                                                      (late, expired or node gone), ``error``
``edgefleet_fl_updates_accepted_total``               updates that passed validation
``edgefleet_fl_updates_refused_total{reason}``        refusals by :class:`RefusalReason` value
                                                      (one update may count under several)
``edgefleet_fl_controller_decisions_total{reason,start}``  the controller's drift checks

The ServerApp runs in a process the SuperLink starts for every run, which ends with it. Give the
SuperLink (and so its ServerApp processes) and the controller the same ``PROMETHEUS_MULTIPROC_DIR``:
the ServerApps' counters stay in its files after they exit, and the controller's ``/metrics``
(``edgefleet fl controller --metrics-port``, :func:`serve`) sums every process's samples
(prometheus-client's multiprocess mode). Without it, each process serves only its own.
"""

from __future__ import annotations

import os
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import start_http_server

from aggregation.report import RoundReport

__all__ = ["observe_decision", "observe_round", "serve"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

if os.environ.get(MULTIPROC_ENV):  # a fresh volume mounted there may not have it yet
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

ROUNDS = Counter("edgefleet_fl_rounds", "Federated rounds finished, by status.", ["status"])
ROUND_DURATION = Histogram("edgefleet_fl_round_duration_seconds",
                           "Wall time of a federated round (query to publish).", ["status"],
                           buckets=ROUND_BUCKETS)
REPLIES = Counter("edgefleet_fl_replies", "Train replies by kind.", ["kind"])
ACCEPTED = Counter("edgefleet_fl_updates_accepted", "Client updates that passed validation.")
REFUSED = Counter("edgefleet_fl_updates_refused", "Client update refusals, by reason.",
                  ["reason"])
DECISIONS = Counter("edgefleet_fl_controller_decisions",
                    "Drift controller checks, by reason and whether a run started.",
                    ["reason", "start"])


def observe_round(report: RoundReport, seconds: float) -> None:
    """Count one finished round (called by :meth:`aggregation.rounds.RoundRunner.run_round`)."""
    status = "ok" if report.ok else "failed"
    ROUNDS.labels(status).inc()
    ROUND_DURATION.labels(status).observe(max(0.0, seconds))
    for kind, n in (("replied", len(report.replied)), ("declined", len(report.declined)),
                    ("straggler", len(report.stragglers)),
                    ("error", len(report.error_replies))):
        if n:
            REPLIES.labels(kind).inc(n)
    if report.accepted:
        ACCEPTED.inc(len(report.accepted))
    for reason, n in report.refused_reasons.items():
        REFUSED.labels(reason).inc(n)


def observe_decision(reason: str, start: bool) -> None:
    """Count one drift check of the controller."""
    DECISIONS.labels(reason, "true" if start else "false").inc()


def serve(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; in multiprocess mode the sum
    over every process that wrote to ``PROMETHEUS_MULTIPROC_DIR`` (see the module notes)."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
