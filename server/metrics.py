"""Prometheus metrics of the server: what every request did, and what the fleet looks like.

Per request (recorded by :class:`MetricsMiddleware`, or :func:`record` for the inference fast
path, :mod:`server.fastpath`; in the process that served it, and added to
the metrics once per turn of its event loop: see :class:`_Pending`):

``edgefleet_http_requests_total{method,route,status}``
    Requests by route template (``/api/v1/devices/{device_id}/assignment``, never the raw path,
    so the label set stays bounded; unmatched paths are ``<unmatched>``) and status code.
``edgefleet_http_request_duration_seconds{method,route}``
    Latency histogram, from the first byte received to the response's last byte.
``edgefleet_inference_requests_total{model,version,variant,status}``
    V2 inference by model, resolved version and variant: ``production`` for the model's route,
    ``pinned`` for ``/versions/{v}``, or whatever a route puts in ``request.state.variant``.
``edgefleet_inference_duration_seconds{model,variant}``
    Inference latency histogram.
``edgefleet_telemetry_reports_total{outcome}``
    Telemetry intake: ``accepted`` (201), ``duplicate`` (200, an idempotent retry) or
    ``refused`` (4xx).

Per scrape, from the database (:class:`FleetCollector`, cached for ``FLEET_CACHE_S``):

``edgefleet_devices{state}``                       enrolled and revoked devices
``edgefleet_devices_seen{window}``                 devices seen within 5 min, 1 h, 24 h
``edgefleet_devices_running{model,version}``       devices by the version they report running
``edgefleet_fleet_drift_share_drifted{model,version}``  share of drifted features over the last
                                                   hour's merged drift summaries
``edgefleet_fleet_drift_max_psi{model,version}``   the largest PSI among them
``edgefleet_fleet_drift_reports{model,version}``   reports behind those two figures
``edgefleet_rollouts{state}``                      rollouts by state (pending, running, ...)
``edgefleet_rollout_step{model,rollout,strategy,state,candidate,baseline}``  the current step
                                                   (0-based) of each active rollout

Several uvicorn workers: set ``PROMETHEUS_MULTIPROC_DIR`` (``edgefleet server run --workers N``
does, to a fresh directory, when it is unset) before the workers import ``prometheus_client``;
each worker then writes its samples to files there and ``/metrics``, served by any worker, sums
them over all workers (prometheus-client's multiprocess mode). Without it, one process's
registry is served.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.drift import DriftSummary
from registry.models import Device, Model, ModelVersion, TelemetryRecord
from registry.versions import reference_of
from server.drift import DriftRecord, DriftThresholds, ThresholdPolicy, fleet_drift

__all__ = [
    "CONTENT_TYPE_LATEST",
    "FleetCollector",
    "MetricsMiddleware",
    "install",
    "multiprocess_dir",
    "record",
    "render",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLEET_CACHE_S = 15.0
DRIFT_WINDOW = timedelta(hours=1)
SEEN_WINDOWS = (("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)),
                ("24h", timedelta(hours=24)))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TELEMETRY_ROUTE = "/api/v1/devices/{device_id}/telemetry"

REQUESTS = Counter("edgefleet_http_requests", "HTTP requests by route template and status.",
                   ["method", "route", "status"])
LATENCY = Histogram("edgefleet_http_request_duration_seconds",
                    "HTTP request latency by route template.", ["method", "route"],
                    buckets=LATENCY_BUCKETS)
INFERENCE = Counter("edgefleet_inference_requests",
                    "V2 inference requests by model, version and variant.",
                    ["model", "version", "variant", "status"])
INFERENCE_LATENCY = Histogram("edgefleet_inference_duration_seconds",
                              "V2 inference latency by model and variant.", ["model", "variant"],
                              buckets=LATENCY_BUCKETS)
TELEMETRY = Counter("edgefleet_telemetry_reports", "Telemetry reports received, by outcome.",
                    ["outcome"])


def multiprocess_dir() -> str | None:
    """The multiprocess directory in force (``None``: single-process mode)."""
    return os.environ.get(MULTIPROC_ENV) or None


def _route_of(scope: Scope) -> str:
    """The matched route's template with the static prefixes of the routers it sits in.

    FastAPI keeps included routers nested, so ``scope["route"].path`` is relative to its
    router's prefix (``/devices/{device_id}/assignment``); the prefix is the leading part of the
    request path that the relative template does not cover (prefixes carry no parameters). A
    route marked ``absolute`` (:class:`server.fastpath.RouteTemplate`) names the whole template.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "<unmatched>"
    if getattr(route, "absolute", False):  # the fast path's templates: no router prefix
        return str(template)
    segments = str(scope.get("path", "")).rstrip("/").split("/")
    own = str(template).rstrip("/").count("/")
    prefix = "/".join(segments[: max(1, len(segments) - own)])
    return f"{prefix}{template}" if prefix else str(template)


def _variant(route: str, state: dict[str, object]) -> str:
    given = state.get("variant")
    if isinstance(given, str) and given:
        return given
    return "pinned" if "/versions/{version}/" in route else "production"


def _telemetry_outcome(status: int) -> str | None:
    if status == 201:
        return "accepted"
    if status == 200:
        return "duplicate"
    return "refused" if 400 <= status < 500 else None


class MetricsMiddleware:
    """Count and time every HTTP request (see the module notes); ``/metrics`` itself too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            record(scope, status, time.perf_counter() - started)


def record(scope: Scope, status: int, seconds: float) -> None:
    """Count and time one answered request (``status``, ``seconds``) under its route's labels:
    what :class:`MetricsMiddleware` records, for a layer that answers in front of it
    (:mod:`server.fastpath`)."""
    method = str(scope.get("method", "GET"))
    route = _route_of(scope)
    state: dict[str, object] = scope.get("state") or {}
    key: tuple[object, ...]
    if method == "POST" and route.startswith("/v2/models/") and route.endswith("/infer"):
        key = (method, route, status, state.get("model"), state.get("model_version"),
               state.get("variant"))
    else:
        key = (method, route, status)
    found = _RECORDERS.get(key)
    if found is None:
        found = _recorders(key, state)
        if len(_RECORDERS) < _MAX_CHILDREN:
            _RECORDERS[key] = found
    _PENDING.add(found, seconds)


#: What one kind of request records: the labelled counters it increments and the labelled
#: histograms it observes, by (method, route, status) and, for inference, model, version and
#: variant as the request's state gave them (at most ``_MAX_CHILDREN``): ``labels()`` checks
#: and converts its values and takes the metric's lock on every call.
_RECORDERS: dict[tuple[object, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
_MAX_CHILDREN = 10_000


def _recorders(key: tuple[object, ...], state: dict[str, object]
               ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The counters and histograms of a request of ``key`` (see ``_RECORDERS``)."""
    method, route, status = str(key[0]), str(key[1]), int(key[2])  # type: ignore[call-overload]
    counters = [REQUESTS.labels(method, route, str(status))]
    histograms = [LATENCY.labels(method, route)]
    if len(key) > 3:
        model = str(key[3] or "-")
        version = key[4]
        variant = _variant(route, state)
        counters.append(INFERENCE.labels(model, "-" if version is None else str(version),
                                         variant, str(status)))
        histograms.append(INFERENCE_LATENCY.labels(model, variant))
    elif method == "POST" and route == _TELEMETRY_ROUTE:
        outcome = _telemetry_outcome(status)
        if outcome is not None:
            counters.append(TELEMETRY.labels(outcome))
    return tuple(counters), tuple(histograms)


class _Pending:
    """Requests recorded but not yet added to their metrics, added together once per turn of
    the event loop that recorded them (``loop.call_soon``): requests answered in one turn cost
    one ``inc`` per counter and histogram bucket instead of one each (in multiprocess mode each
    is a write to the worker's file). A request's samples are in place before the event loop
    takes up anything that arrived after it, such as a scrape. Every histogram here uses
    ``LATENCY_BUCKETS``; the counts go to its buckets as ``Histogram.observe`` puts them (the
    first bucket whose bound is at least the value)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # several event loops in one process (test clients)
        self._counts: dict[tuple[tuple[Any, ...], tuple[Any, ...]], list[Any]] = {}
        self._scheduled = False

    def add(self, recorders: tuple[tuple[Any, ...], tuple[Any, ...]], seconds: float) -> None:
        bucket = bisect.bisect_left(_BOUNDS, seconds)
        with self._lock:
            slot = self._counts.get(recorders)
            if slot is None:
                slot = self._counts[recorders] = [0, 0.0, [0] * len(_BOUNDS)]
            slot[0] += 1
            slot[1] += seconds
            slot[2][bucket] += 1
            if self._scheduled:
                return
            self._scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no event loop here: add at once
            self.flush()

    def flush(self) -> None:
        """Add what is pending to the metrics."""
        with self._lock:
            counts, self._counts = self._counts, {}
            self._scheduled = False
        for (counters, histograms), (n, total, buckets) in counts.items():
            for counter in counters:
                counter.inc(n)
            for histogram in histograms:
                histogram._sum.inc(total)
                for i, k in enumerate(buckets):
                    if k:
                        histogram._buckets[i].inc(k)


_BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # a histogram's buckets, +Inf last
_PENDING = _Pending()


class FleetCollector(Collector):
    """Fleet gauges computed from the database at scrape time (see the module notes).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The server's database.
    policy : ThresholdPolicy
        Drift thresholds per model (the server's ``drift_thresholds`` setting).
    cache_s : float (default: ``FLEET_CACHE_S``)
        A scrape within this many seconds of the previous one reuses its figures.
    """

    def __init__(self, engine: Engine, policy: ThresholdPolicy,
                 cache_s: float = FLEET_CACHE_S) -> None:
        self.engine = engine
        self.policy = policy
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.cache_s:
                self._cached = (now, self._compute())
            return list(self._cached[1])

    def _compute(self) -> list[Metric]:
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            out = _devices(conn, now)
            out.extend(self._drift(conn, now))
            out.extend(_rollouts(conn))
        return out

    def _drift(self, conn: Connection, now: datetime) -> list[Metric]:
        share = GaugeMetricFamily("edgefleet_fleet_drift_share_drifted",
                                  "Share of drifted features, fleet drift of the last hour.",
                                  labels=["model", "version"])
        psi = GaugeMetricFamily("edgefleet_fleet_drift_max_psi",
                                "Largest feature PSI, fleet drift of the last hour.",
                                labels=["model", "version"])
        reports = GaugeMetricFamily("edgefleet_fleet_drift_reports",
                                    "Drift summaries behind the fleet drift of the last hour.",
                                    labels=["model", "version"])
        since = now - DRIFT_WINDOW
        recent = (col(TelemetryRecord.window_end) >= since) & col(TelemetryRecord.drift).is_not(
            None)
        ids = select(col(TelemetryRecord.version_id)).where(recent)
        with Session(bind=conn) as session:
            versions = session.exec(
                select(ModelVersion, Model.name)
                .join(Model, col(ModelVersion.model_id) == col(Model.id))
                .where(col(ModelVersion.id).in_(ids))
            ).all()
            for version, model in versions:
                reference = reference_of(version)
                if reference is None:
                    continue
                rows = conn.execute(select(col(TelemetryRecord.drift)).where(
                    recent, col(TelemetryRecord.version_id) == version.id)).all()
                records = [r for r in (_record(model, version.number, row[0]) for row in rows)
                           if r is not None]
                thresholds: DriftThresholds = self.policy.for_model(model)
                report = fleet_drift(records, reference, model=model, version=version.number,
                                     thresholds=thresholds)
                labels = [model, str(version.number)]
                share.add_metric(labels, report.share_drifted)
                psi.add_metric(labels, report.max_psi if report.max_psi is not None else 0.0)
                reports.add_metric(labels, float(len(records)))
        return [share, psi, reports]


def _count(conn: Connection, *where: Any) -> float:
    query = select(func.count()).select_from(Device)
    for clause in where:
        query = query.where(clause)
    return float(conn.execute(query).scalar_one())


def _devices(conn: Connection, now: datetime) -> list[Metric]:
    states = GaugeMetricFamily("edgefleet_devices", "Enrolled devices by state.",
                               labels=["state"])
    revoked = _count(conn, col(Device.revoked_at).is_not(None))
    states.add_metric(["enrolled"], _count(conn) - revoked)
    states.add_metric(["revoked"], revoked)
    seen = GaugeMetricFamily("edgefleet_devices_seen",
                             "Devices seen (any authenticated request) within a window.",
                             labels=["window"])
    for name, span in SEEN_WINDOWS:
        seen.add_metric([name], _count(conn, col(Device.last_seen_at) >= now - span))
    running = GaugeMetricFamily("edgefleet_devices_running",
                                "Devices by the model version they report running.",
                                labels=["model", "version"])
    rows = conn.execute(
        select(col(Model.name), col(ModelVersion.number), func.count(col(Device.id)))
        .join(ModelVersion, col(Device.running_version_id) == col(ModelVersion.id))
        .join(Model, col(ModelVersion.model_id) == col(Model.id))
        .where(col(Device.revoked_at).is_(None))
        .group_by(col(Model.name), col(ModelVersion.number))
    ).all()
    for name, number, n in rows:
        running.add_metric([str(name), str(number)], float(n))
    return [states, seen, running]


def _rollouts(conn: Connection) -> list[Metric]:
    """Rollouts by state, and the step of each active one (at most one per model)."""
    import sqlalchemy as sa

    from edgefleet.rollouts import ACTIVE_STATES, RolloutState
    from registry.models import Rollout

    states = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state.", labels=["state"])
    counts = dict(conn.execute(select(col(Rollout.state), func.count()).group_by(
        col(Rollout.state))).all())
    for state in RolloutState.__args__:  # type: ignore[attr-defined]
        states.add_metric([state], float(counts.get(state, 0)))
    step = GaugeMetricFamily("edgefleet_rollout_step", "Current step of each active rollout.",
                             labels=["model", "rollout", "strategy", "state", "candidate",
                                     "baseline"])
    numbers = select(col(ModelVersion.id), col(ModelVersion.number)).subquery()
    cand, base = numbers.alias("cand"), numbers.alias("base")
    rows = conn.execute(
        sa.select(col(Model.name), col(Rollout.id), col(Rollout.strategy), col(Rollout.state),
                  col(Rollout.step), cand.c.number, base.c.number)
        .join(Model, col(Rollout.model_id) == col(Model.id))
        .outerjoin(cand, col(Rollout.candidate_version_id) == cand.c.id)
        .outerjoin(base, col(Rollout.baseline_version_id) == base.c.id)
        .where(col(Rollout.state).in_(ACTIVE_STATES))
    ).all()
    for name, rid, strategy, state, number, candidate, baseline in rows:
        step.add_metric([str(name), str(rid), str(strategy), str(state),
                         "" if candidate is None else str(candidate),
                         "" if baseline is None else str(baseline)], float(number))
    return [states, step]


def _record(model: str, version: int, drift: object) -> DriftRecord | None:
    try:
        summary = DriftSummary.parse(drift)  # type: ignore[arg-type]
    except Exception:  # a summary that does not parse is left out, as the drift routes do
        return None
    epoch = datetime.fromtimestamp(0, UTC)
    return DriftRecord("-", model, version, epoch, epoch, summary)


def render(fleet: Collector | None = None) -> bytes:
    """The exposition text of this process (of every worker, in multiprocess mode) followed by
    ``fleet``'s gauges."""
    _PENDING.flush()
    if multiprocess_dir() is None:
        text = generate_latest(REGISTRY)
    else:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    if fleet is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(fleet)
        text += generate_latest(registry)
    return text


def install(app: FastAPI, engine: Engine, policy: ThresholdPolicy) -> None:
    """Count every request of ``app`` and collect the fleet's gauges for ``GET /metrics``.

    Call it after every other middleware is added, so that the counts include the requests
    those middlewares answer themselves (413 for an oversized body). The route itself is
    :mod:`server.api.routes.metrics`, which the app includes beside this call.
    """
    app.state.fleet_collector = FleetCollector(engine, policy)
    app.add_middleware(MetricsMiddleware)
