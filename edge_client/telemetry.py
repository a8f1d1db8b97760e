"""What the device reports, and getting it to the server through the outbox.

:class:`Telemetry` keeps one *window* per model version that answered: a drift accumulator
(updated by every local inference), counts of local/fallback/failed inferences and a bounded
reservoir sample of local-inference latencies (for p50/p99; the fallback's round trip would say
more about the network than the device, so only the local path's latency is reported). Each
telemetry interval, :meth:`Telemetry.flush` closes the windows into
:class:`~edgefleet.wire.TelemetryReport`\\ s — each with a fresh ``uuid4`` idempotency key it keeps
for every retry — and queues them in the :class:`~edge_client.outbox.Outbox`;
:meth:`Telemetry.drain` then sends what is due.

The active version gets a report every interval even without traffic (a heartbeat carrying its
version and local evaluation). Device events (:mod:`edge_client.events`) ride on the reports:
each window with local-model failures adds one ``crash`` event (its ``count`` the failures), and
the pending lifecycle events (switch, smoke test failed, refused, rollback) go on the report of
the active version (or of their own version when no report of their model is due). A shadow
version run beside the active one (:mod:`edge_client.side_versions`) adds its figures to the
active version's report (``shadow``).

The cumulative drift summary of each version (all windows merged) is kept in the state database,
where the Flower ClientApp reads it for its ``query`` reply.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from edge_client.client import ServerClient
from edge_client.errors import ServerRejectedError, ServerUnavailableError, UnauthorizedError
from edge_client.events import DeviceEvents, coalesce
from edge_client.outbox import Outbox
from edge_client.storage import StateStore
from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.drift.summary import DriftSummary
from edgefleet.errors import EdgeFleetError
from edgefleet.plan import PlanManifest
from edgefleet.wire import (
    MAX_EVENTS_PER_REPORT,
    DeviceEvent,
    InferenceStats,
    LocalEvaluation,
    ShadowStats,
    TelemetryReport,
)

log = logging.getLogger(__name__)
REPORT_KIND = "telemetry"
MAX_LATENCY_SAMPLES = 4096
#: Local rows kept (copied) before they update the drift accumulator in one batch.
DRIFT_BATCH_ROWS = 256
VersionKey = tuple[str, int]


@dataclass
class _Window:
    start: datetime
    accumulator: DriftAccumulator | None
    local: int = 0
    fallback: int = 0
    errors: int = 0
    seen: int = 0
    latencies: list[float] = field(default_factory=list)
    last_error_at: datetime | None = None
    pending_x: list[np.ndarray] = field(default_factory=list)
    pending_p: list[np.ndarray] = field(default_factory=list)
    pending_rows: int = 0

    def apply_pending(self) -> None:
        """Update the drift accumulator with the rows kept since the last update."""
        xs, ps, self.pending_x, self.pending_p = self.pending_x, self.pending_p, [], []
        self.pending_rows = 0
        if self.accumulator is None or not xs:
            return
        try:
            x = np.concatenate([a.reshape(a.shape[0], int(np.prod(a.shape[1:]))) for a in xs])
            self.accumulator.update(x, np.concatenate(ps))
        except (EdgeFleetError, ValueError) as exc:  # never let drift bookkeeping break inference
            log.warning("drift update of %d rows skipped: %s", len(xs), exc)

    def add_latency(self, ms: float) -> None:
        """Reservoir sampling: every latency has the same chance to be in the sample."""
        self.seen += 1
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(ms)
        elif (j := random.randrange(self.seen)) < MAX_LATENCY_SAMPLES:
            self.latencies[j] = ms

    def stats(self) -> InferenceStats:
        lat = np.asarray(self.latencies)
        return InferenceStats(
            local=self.local, fallback=self.fallback, errors=self.errors,
            latency_ms_p50=float(np.percentile(lat, 50)) if lat.size else None,
            latency_ms_p99=float(np.percentile(lat, 99)) if lat.size else None,
        )


@dataclass(frozen=True)
class DrainResult:
    """What one :meth:`Telemetry.drain` did."""

    sent: int = 0
    duplicates: int = 0
    failed: int = 0
    discarded: int = 0
    error: str | None = None


def merge_report_bodies(older: str, newer: str) -> str:
    """Merge two queued reports of one model version (the outbox's ``merge``).

    Counts and drift summaries add up exactly (drift merges associatively); the window spans
    both; p50 becomes the count-weighted mean of the two p50s and p99 their maximum (quantiles do
    not merge exactly: both are documented approximations); the newer local evaluation wins.
    The older report's idempotency key is kept: neither report was ever sent. Events are
    concatenated (crash counts of one version added; the newest ``MAX_EVENTS_PER_REPORT`` kept).
    """
    a = TelemetryReport.model_validate_json(older)
    b = TelemetryReport.model_validate_json(newer)
    drift = a.drift.merge(b.drift) if a.drift and b.drift else (a.drift or b.drift)
    ia, ib = a.inference, b.inference
    p50s = [(p, n) for p, n in ((ia.latency_ms_p50, ia.local), (ib.latency_ms_p50, ib.local))
            if p is not None]
    weight = sum(max(n, 1) for _, n in p50s)
    p99s = [p for p in (ia.latency_ms_p99, ib.latency_ms_p99) if p is not None]
    merged = a.model_copy(update={
        "window_start": min(a.window_start, b.window_start),
        "window_end": max(a.window_end, b.window_end),
        "drift": drift,
        "inference": InferenceStats(
            local=ia.local + ib.local, fallback=ia.fallback + ib.fallback,
            errors=ia.errors + ib.errors,
            latency_ms_p50=sum(p * max(n, 1) for p, n in p50s) / weight if p50s else None,
            latency_ms_p99=max(p99s) if p99s else None,
        ),
        "local_eval": b.local_eval or a.local_eval,
        "dropped_reports": a.dropped_reports + b.dropped_reports,
        "events": coalesce([*a.events, *b.events]),
        "shadow": _merge_shadow(a.shadow, b.shadow),
    })
    return merged.model_dump_json()


class Shadow(Protocol):
    """A version run beside the active one (:class:`edge_client.side_versions.ShadowRun`)."""

    model: str
    version: int

    def observe(self, x: np.ndarray, probs: np.ndarray) -> None: ...

    def take(self) -> ShadowStats | None: ...


def _merge_shadow(a: ShadowStats | None, b: ShadowStats | None) -> ShadowStats | None:
    """Two windows' shadow figures: added when about the same version, else the newer."""
    if a is None or b is None or a.version != b.version:
        return b or a
    return ShadowStats(version=a.version, n=a.n + b.n, agree=a.agree + b.agree,
                       confidence_delta_sum=a.confidence_delta_sum + b.confidence_delta_sum)


class Telemetry:
    """Windows of observations per model version, closed into reports queued in ``outbox``."""

    def __init__(self, outbox: Outbox, state: StateStore) -> None:
        self.outbox = outbox
        self.state = state
        self._windows: dict[VersionKey, _Window] = {}
        self._lock = threading.Lock()
        # local answers not yet in their windows: appended without the lock (deque.append is
        # atomic), folded in under it (_fold_local)
        self._local: deque[tuple[VersionKey, PlanManifest, np.ndarray, np.ndarray, float]] = (
            deque())
        self.events = DeviceEvents(state)
        self.shadow: Shadow | None = None  # set by edge_client.side_versions

    def _window(self, key: VersionKey, manifest: PlanManifest | None) -> _Window:
        window = self._windows.get(key)
        if window is None:
            acc = None
            if manifest is not None and manifest.reference is not None:
                acc = DriftAccumulator(manifest.reference, model=key[0], version=key[1])
            window = self._windows[key] = _Window(datetime.now(UTC), acc)
        elif window.accumulator is None and manifest is not None and manifest.reference:
            window.accumulator = DriftAccumulator(manifest.reference, model=key[0],
                                                  version=key[1])
        return window

    # --- observations ---------------------------------------------------------------------------
    def record_local(self, manifest: PlanManifest, version: int, x: np.ndarray,
                     probs: np.ndarray, latency_ms: float, *, model: str | None = None) -> None:
        """A local inference: counts, latency and the drift accumulator.

        The answer is queued (copies of ``x`` and ``probs``: the caller may reuse its arrays)
        and folded into its window every ``DRIFT_BATCH_ROWS`` answers and at every
        :meth:`flush`; the drift accumulator is updated in batches of as many rows.

        ``model`` is the registry model the version belongs to (default: the plan's name); the
        server knows the report by that name, which need not be the plan's.
        """
        key = (model or manifest.name, version)
        queued = self._local
        queued.append((key, manifest, x.copy(), probs.copy(), latency_ms))
        if len(queued) >= DRIFT_BATCH_ROWS:
            with self._lock:
                self._fold_local()
        shadow = self.shadow
        if shadow is not None and shadow.model == key[0] and shadow.version != version:
            shadow.observe(x, probs)  # a rollout's shadow beside the active version

    def _fold_local(self) -> None:
        """Move the queued local answers into their windows (the lock is held; other threads
        only append, so every answer queued before this call is folded exactly once)."""
        queued = self._local
        touched = []
        for _ in range(len(queued)):
            key, manifest, x, probs, latency_ms = queued.popleft()
            window = self._windows.get(key)
            if window is None or window.accumulator is None:
                window = self._window(key, manifest)
            window.local += x.shape[0]
            window.add_latency(latency_ms)
            if window.accumulator is not None:
                window.pending_x.append(x)
                window.pending_p.append(probs)
                window.pending_rows += x.shape[0]
                touched.append(window)
        for window in touched:
            if window.pending_rows >= DRIFT_BATCH_ROWS:
                window.apply_pending()

    def record_fallback(self, model: str, version: int, rows: int) -> None:
        with self._lock:
            self._window((model, version), None).fallback += rows

    def record_error(self, model: str, version: int) -> None:
        """A failure of the local model (reported as ``errors`` and as a ``crash`` event)."""
        with self._lock:
            window = self._window((model, version), None)
            window.errors += 1
            window.last_error_at = datetime.now(UTC)

    # --- reports --------------------------------------------------------------------------------
    def flush(
        self,
        active: VersionKey | None,
        local_eval: Callable[[], LocalEvaluation | None] | None = None,
    ) -> list[TelemetryReport]:
        """Close every window (and a heartbeat for ``active``) into queued reports."""
        with self._lock:
            self._fold_local()
            windows, self._windows = self._windows, {}
        if active is not None and active not in windows:
            windows[active] = _Window(datetime.now(UTC), None)
        if active is not None:
            self.events.note_active(*active)
        carried = self._carry(windows, active, self.events.take())
        shadow = self.shadow.take() if self.shadow is not None and active is not None else None
        reports = []
        end = datetime.now(UTC)
        for (model, version), window in windows.items():
            drift = None
            window.apply_pending()
            if window.accumulator is not None and window.accumulator.n:
                drift = window.accumulator.take()
                self._save_cumulative(drift)
            evaluation = local_eval() if local_eval and (model, version) == active else None
            dropped = self.outbox.pending_dropped()
            report = TelemetryReport(
                idempotency_key=uuid.uuid4().hex, model=model, version=version,
                window_start=window.start, window_end=end, drift=drift,
                inference=window.stats(), local_eval=evaluation, dropped_reports=dropped,
                events=carried.get((model, version), []),
                shadow=shadow if (model, version) == active else None,
            )
            self.outbox.put(report.idempotency_key, REPORT_KIND, model, version,
                            report.model_dump_json(), consumes_dropped=dropped)
            reports.append(report)
        return reports

    def _carry(self, windows: dict[VersionKey, _Window], active: VersionKey | None,
               pending: list[DeviceEvent]) -> dict[VersionKey, list[DeviceEvent]]:
        """Which report carries which events (adding windows where none of a model is due)."""
        carried: dict[VersionKey, list[DeviceEvent]] = {}
        for key, window in windows.items():
            if window.errors:
                carried[key] = [DeviceEvent(kind="crash", at=window.last_error_at or
                                            datetime.now(UTC), model=key[0], version=key[1],
                                            count=window.errors)]
        for event in pending:
            if active is not None and active[0] == event.model:
                key = active
            else:
                key = next((k for k in windows if k[0] == event.model),
                           (event.model, event.version))
            windows.setdefault(key, _Window(event.at, None))
            carried.setdefault(key, []).append(event)
        for key, events in carried.items():
            if len(events) > MAX_EVENTS_PER_REPORT:  # the rest waits for the next flush
                carried[key] = events[:MAX_EVENTS_PER_REPORT]
                self.events.add(events[MAX_EVENTS_PER_REPORT:])
        return carried

    def _save_cumulative(self, drift: DriftSummary) -> None:
        previous = self.state.load_drift(drift.model, drift.version)
        merged = drift
        if previous is not None:
            try:
                merged = DriftSummary.parse(previous).merge(drift)
            except EdgeFleetError as exc:  # another reference under the same version: restart
                log.warning("cumulative drift restarted for %s v%s: %s",
                            drift.model, drift.version, exc)
        self.state.save_drift(drift.model, drift.version, merged.model_dump_json())

    def drain(self, client: ServerClient, device_id: str, *, limit: int = 50) -> DrainResult:
        """Send the due reports, oldest first; stop at the first network failure."""
        sent = duplicates = failed = discarded = 0
        for entry in self.outbox.due(limit=limit):
            try:
                report = TelemetryReport.model_validate_json(entry.body)
                ack = client.post_telemetry(device_id, report)
            except ServerUnavailableError as exc:
                self.outbox.failed(entry.key, str(exc))
                return DrainResult(sent, duplicates, failed + 1, discarded, str(exc))
            except UnauthorizedError as exc:  # keep it: the token may be fixed by re-enrolling
                self.outbox.failed(entry.key, str(exc))
                return DrainResult(sent, duplicates, failed + 1, discarded, str(exc))
            except (ServerRejectedError, ValueError) as exc:
                if isinstance(exc, ServerRejectedError) and exc.status_code in (408, 409, 429):
                    self.outbox.failed(entry.key, str(exc))
                    failed += 1
                    continue
                log.error("telemetry report %s refused for good, dropped: %s", entry.key, exc)
                self.outbox.discard(entry.key)
                discarded += 1
                continue
            self.outbox.sent(entry.key)
            sent += 1
            duplicates += int(ack.duplicate)
        return DrainResult(sent, duplicates, failed, discarded)
