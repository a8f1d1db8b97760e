"""Device events: what happened to model versions on this device, on their way to the server.

:class:`DeviceEvents` turns the model manager's notifications (``installed``, ``rejected``,
``rolled_back``; see :class:`edge_client.models.ModelManager`) into wire events
(:class:`edgefleet.wire.DeviceEvent`): ``switch`` (with the version it replaced; its ``detail``
says whether a blue-green pre-download was installed from), ``smoke_failed``
(a download that does not load or fails its smoke test), ``refused`` (integrity or signature),
``rollback`` (from the version abandoned to the one restored). Crashes of the active model are
counted by the telemetry window of that version and become one ``crash`` event per window
(:meth:`edge_client.telemetry.Telemetry.flush`).

Pending events live in the state database (key ``pending_events``) until
:meth:`Telemetry.flush` moves them into a report in the outbox, which then delivers them like
any report (once: the report's idempotency key). At most :data:`MAX_PENDING` wait; beyond that
the oldest are dropped and counted (``dropped``). Between the two databases, a crash right after
:meth:`take` and before the outbox write loses that flush's events (the state store is written
first so that nothing is ever sent twice).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from edge_client.errors import AgentError
from edge_client.storage import StateStore
from edgefleet.wire import MAX_EVENTS_PER_REPORT, DeviceEvent

__all__ = ["MAX_PENDING", "DeviceEvents", "coalesce", "from_model_event"]

log = logging.getLogger(__name__)
MAX_PENDING = 500
_PENDING = "pending_events"
_CURRENT = "events_current"  # model -> the version last switched to (for ``from_version``)
_DETAIL = 1000


def _smoke(reason: str) -> bool:
    return "smoke test" in reason or "does not load" in reason


def from_model_event(kind: str, details: dict[str, Any], current: dict[str, int],
                     at: datetime | None = None) -> DeviceEvent | None:
    """The wire event of one model-manager notification (``None`` for an unknown one).

    ``current`` (model → active version) is read for ``from_version`` and updated.
    """
    when = at or datetime.now(UTC)
    reason = str(details.get("reason", ""))[:_DETAIL]
    if kind == "installed":
        model, version = str(details["model"]), int(details["version"])
        before = current.get(model)
        current[model] = version
        return DeviceEvent(kind="switch", at=when, model=model, version=version,
                           from_version=before if before != version else None,
                           detail=str(details.get("note", ""))[:_DETAIL])
    if kind == "rejected":
        return DeviceEvent(kind="smoke_failed" if _smoke(reason) else "refused", at=when,
                           model=str(details["model"]), version=int(details["version"]),
                           detail=reason)
    if kind == "rolled_back":
        old, new = details.get("from"), details.get("to")
        if not old:
            return None
        model = str(old["model"])
        if new:
            current[model] = int(new["version"])
        else:
            current.pop(model, None)
        return DeviceEvent(kind="rollback", at=when, model=model, version=int(old["version"]),
                           to_version=int(new["version"]) if new else None, detail=reason)
    return None


def coalesce(events: Iterable[DeviceEvent], limit: int = MAX_EVENTS_PER_REPORT
             ) -> list[DeviceEvent]:
    """``events`` with the crash events of one version added into one; the newest ``limit``."""
    out: list[DeviceEvent] = []
    crashes: dict[tuple[str, int], int] = {}
    for e in events:
        key = (e.model, e.version)
        if e.kind == "crash" and key in crashes:
            first = out[crashes[key]]
            out[crashes[key]] = first.model_copy(update={
                "count": min(first.count + e.count, 2**31 - 1), "at": max(first.at, e.at)})
            continue
        if e.kind == "crash":
            crashes[key] = len(out)
        out.append(e)
    return out[-limit:]


class DeviceEvents:
    """The pending events of one agent (see the module notes)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._lock = threading.Lock()
        self.dropped = 0
        try:
            stored = state.get(_PENDING, [])
            self._current: dict[str, int] = dict(state.get(_CURRENT, {}))
        except (AgentError, ValueError) as exc:
            log.warning("pending device events unreadable, starting empty: %s", exc)
            stored, self._current = [], {}
        self._pending: list[DeviceEvent] = []
        for body in stored:
            try:
                self._pending.append(DeviceEvent.model_validate(body))
            except ValueError as exc:
                log.warning("dropping an unreadable pending event: %s", exc)

    def observe(self, kind: str, details: dict[str, Any]) -> None:
        """The model manager's hook: record the event that ``kind`` names, if any."""
        try:
            event = from_model_event(kind, details, self._current)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("model event %s not reported: %s", kind, exc)
            return
        if event is not None:
            self.add([event])

    def add(self, events: Iterable[DeviceEvent]) -> None:
        with self._lock:
            self._pending.extend(events)
            excess = len(self._pending) - MAX_PENDING
            if excess > 0:
                self.dropped += excess
                del self._pending[:excess]
            self._save()

    def note_active(self, model: str, version: int) -> None:
        """The version running now (the ``from_version`` of the next switch, if none known)."""
        with self._lock:
            if model not in self._current:
                self._current[model] = version
                self._save()

    def pending(self) -> list[DeviceEvent]:
        with self._lock:
            return list(self._pending)

    def take(self) -> list[DeviceEvent]:
        """Every pending event, oldest first; they are no longer pending."""
        with self._lock:
            taken, self._pending = self._pending, []
            self._save()
            return taken

    def _save(self) -> None:
        try:
            self.state.set(_PENDING, [e.model_dump(mode="json") for e in self._pending])
            self.state.set(_CURRENT, self._current)
        except AgentError as exc:  # kept in memory; sent while the process runs
            log.error("could not store pending device events: %s", exc)
