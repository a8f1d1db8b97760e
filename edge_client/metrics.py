"""Prometheus metrics of one agent, served at ``GET /metrics`` on its local endpoint.

Counted as predictions happen (:meth:`AgentMetrics.timed` wraps :meth:`Agent.predict`):

``edgefleet_agent_predictions_total{path}``            answered predictions, ``local`` or
                                                       ``fallback`` (the server answered)
``edgefleet_agent_prediction_rows_total{path}``        rows (examples) in them
``edgefleet_agent_prediction_duration_seconds{path}``  latency histogram
``edgefleet_agent_prediction_failures_total{kind}``    refused predictions: ``invalid_input``
                                                       or ``unavailable`` (no local model and
                                                       the fallback failed), ``error`` otherwise

Read from the agent at scrape time (:class:`AgentCollector`):

``edgefleet_agent_outbox_depth``                  telemetry reports waiting in the outbox
``edgefleet_agent_outbox_dropped_total``          reports the bounded outbox dropped
``edgefleet_agent_model_version{model}``          the active model's version (absent: none)
``edgefleet_agent_model_info{model,version,interpreter}``  1 for the active model
``edgefleet_agent_eligible``                      1 when the device may train now, else 0
``edgefleet_agent_consecutive_local_failures``    local inference failures since the last
                                                  success or install
``edgefleet_agent_labelled_examples``             examples in the local label store

Each agent has its own registry, so several agents embedded in one process do not mix.
An answered prediction costs one append to a queue (no lock): the queue is folded into the
counters and the histogram's buckets (``numpy.searchsorted``) every ``FOLD_EVERY`` predictions and
at each scrape (:class:`PredictionCollector`), not observed one by one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from edge_client.errors import InvalidInputError, ModelUnavailableError

if TYPE_CHECKING:
    from edge_client.eligibility import EligibilityProvider
    from edge_client.inference import InferenceRouter, Prediction
    from edge_client.models import ModelManager
    from edge_client.outbox import Outbox
    from edge_client.store import LabelStore

__all__ = ["AgentCollector", "AgentMetrics", "PredictionCollector"]

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)
PATHS = ("local", "fallback")
#: Latencies kept before they are folded into the histogram's buckets.
FOLD_EVERY = 1024


class Observed(Protocol):
    """What the gauges read: any object with these parts (an :class:`~edge_client.agent.Agent`
    is one), so this module does not import the agent."""

    @property
    def outbox(self) -> Outbox: ...

    @property
    def models(self) -> ModelManager: ...

    @property
    def eligibility(self) -> EligibilityProvider: ...

    @property
    def router(self) -> InferenceRouter: ...

    @property
    def labels(self) -> LabelStore: ...


class AgentMetrics:
    """The metrics of one :class:`~edge_client.agent.Agent` (see the module notes)."""

    def __init__(self, agent: Observed) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.failures = Counter("edgefleet_agent_prediction_failures",
                                "Predictions that got no answer, by kind.", ["kind"],
                                registry=self.registry)
        self._lock = threading.Lock()
        # answered (path, rows, seconds), appended without the lock, folded in under it
        self._queued: deque[tuple[str, int, float]] = deque()
        # per path: [predictions, rows], bucket counts (+Inf last), latency sum
        self._counts = {p: [0, 0] for p in PATHS}
        self._buckets = {p: np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64) for p in PATHS}
        self._sums = dict.fromkeys(PATHS, 0.0)
        self._bounds = np.asarray(LATENCY_BUCKETS)
        self.registry.register(PredictionCollector(self))
        self.registry.register(AgentCollector(agent))

    def timed(self, predict: Callable[..., Prediction], *args: Any, **kwargs: Any
              ) -> Prediction:
        """Call ``predict`` and count its outcome."""
        started = time.perf_counter()
        try:
            prediction = predict(*args, **kwargs)
        except Exception as exc:
            self.failed(exc)
            raise
        self.answered(prediction.path, prediction.probs.shape[0], time.perf_counter() - started)
        return prediction

    def answered(self, path: str, rows: int, seconds: float) -> None:
        """Count one answered prediction of ``rows`` rows that took ``seconds``."""
        queued = self._queued
        queued.append((path, rows, seconds))
        if len(queued) >= FOLD_EVERY:
            with self._lock:
                self._fold()

    def failed(self, exc: BaseException) -> None:
        """Count a prediction that got no answer."""
        kind = ("invalid_input" if isinstance(exc, InvalidInputError) else
                "unavailable" if isinstance(exc, ModelUnavailableError) else "error")
        self.failures.labels(kind).inc()

    def _fold(self) -> None:
        """Move the queued predictions into the counters and buckets (the lock is held; other
        threads only append, so each queued prediction is folded exactly once)."""
        queued = self._queued
        latencies: dict[str, list[float]] = {p: [] for p in PATHS}
        for _ in range(len(queued)):
            path, rows, seconds = queued.popleft()
            counts = self._counts[path]
            counts[0] += 1
            counts[1] += rows
            latencies[path].append(seconds)
        for path, values in latencies.items():
            if values:
                index = np.searchsorted(self._bounds, values, side="left")  # le: value <= bound
                self._buckets[path] += np.bincount(index, minlength=self._bounds.size + 1)
                self._sums[path] += float(np.sum(values))

    def snapshot(self) -> dict[str, tuple[int, int, list[int], float]]:
        """Per path: predictions, rows, cumulative bucket counts (``+Inf`` last), latency sum."""
        with self._lock:
            self._fold()
            out = {}
            for path in PATHS:
                n, rows = self._counts[path]
                out[path] = (n, rows, np.cumsum(self._buckets[path]).tolist(), self._sums[path])
            return out

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class PredictionCollector(Collector):
    """The answered predictions' counters and latency histogram, read from
    :meth:`AgentMetrics.snapshot` at scrape time."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        predictions = CounterMetricFamily("edgefleet_agent_predictions",
                                          "Answered predictions by path.", labels=["path"])
        rows = CounterMetricFamily("edgefleet_agent_prediction_rows", "Rows predicted, by path.",
                                   labels=["path"])
        latency = HistogramMetricFamily("edgefleet_agent_prediction_duration_seconds",
                                        "Prediction latency by path.", labels=["path"])
        bounds = [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for path, (n, r, cumulative, total) in self.metrics.snapshot().items():
            predictions.add_metric([path], n)
            rows.add_metric([path], r)
            if n:
                latency.add_metric([path], list(zip(bounds, cumulative, strict=True)), total)
        yield predictions
        yield rows
        yield latency


class AgentCollector(Collector):
    """Gauges read from the agent's stores at scrape time (see the module notes)."""

    def __init__(self, agent: Observed) -> None:
        self.agent = agent

    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape: nothing to check for clashes up front

    def collect(self) -> Iterable[Metric]:
        a = self.agent
        yield _gauge("edgefleet_agent_outbox_depth", "Telemetry reports waiting in the outbox.",
                     a.outbox.depth())
        yield _gauge("edgefleet_agent_outbox_dropped_total",
                     "Telemetry reports the bounded outbox dropped.",
                     a.outbox.counter("dropped_total"))
        active = a.models.active
        version = GaugeMetricFamily("edgefleet_agent_model_version",
                                    "Version of the active model.", labels=["model"])
        info = GaugeMetricFamily("edgefleet_agent_model_info", "The active model (value 1).",
                                 labels=["model", "version", "interpreter"])
        if active is not None:
            version.add_metric([active.info.model], float(active.info.version))
            info.add_metric([active.info.model, str(active.info.version),
                             active.runtime.interpreter_name], 1.0)
        yield version
        yield info
        try:
            eligible = 1.0 if a.eligibility.check().eligible else 0.0
        except Exception as exc:  # a probe that fails must not break the scrape
            log.warning("eligibility check failed during a scrape: %s", exc)
            eligible = 0.0
        yield _gauge("edgefleet_agent_eligible", "1 when the device may train now.", eligible)
        yield _gauge("edgefleet_agent_consecutive_local_failures",
                     "Local inference failures since the last success or install.",
                     a.router.failures)
        yield _gauge("edgefleet_agent_labelled_examples", "Examples in the local label store.",
                     a.labels.count())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
