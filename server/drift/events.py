"""Threshold crossings of a model's fleet drift, with hysteresis.

A model version is in one of two states, *clear* or *drifted*. Its fleet's windows, in time
order, move it:

* clear → drifted after ``enter_windows`` consecutive windows whose verdict is ``drift``
  (a ``drift_started`` event, stamped with the window that completed the streak);
* drifted → clear after ``clear_windows`` consecutive sufficient windows that are not even
  *holding* (no test passes the laxer exit rule, see :class:`~server.drift.DriftThresholds`)
  (a ``drift_cleared`` event).

``insufficient`` windows (too few samples) and gaps leave the state and the streaks unchanged.
The state is a small pydantic model: a caller that sees windows one at a time (the telemetry
intake, after each closed window) persists it and calls :func:`step`; a caller with a whole
series calls :func:`detect_crossings`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from server.drift.report import ReportModel, Verdict
from server.drift.thresholds import DriftThresholds


class WindowDrift(ReportModel):
    """The fleet's verdict in one time window (all devices' summaries merged).

    Built with ``WindowDrift.project(report, window_start=…, window_end=…, n_devices=…,
    n_reports=…)`` from the window's :class:`~server.drift.DriftReport`.
    """

    window_start: datetime
    window_end: datetime
    n_devices: int
    n_reports: int
    n_samples: int
    verdict: Verdict
    reason: str
    share_drifted: float
    max_psi: float | None
    holding: bool
    drifted_features: list[str]


class DriftEvent(ReportModel):
    """A model version's fleet drift crossed its threshold (consumed by rounds and rollouts)."""

    kind: Literal["drift_started", "drift_cleared"]
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    share_drifted: float
    max_psi: float | None
    drifted_features: list[str]


class MonitorState(ReportModel):
    """Hysteresis state of one model version (persist it between calls to :func:`step`)."""

    drifted: bool = False
    enter_streak: int = 0
    clear_streak: int = 0
    since: datetime | None = None


def step(
    state: MonitorState,
    window: WindowDrift,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: int,
) -> tuple[MonitorState, DriftEvent | None]:
    """Advance the state by one window; returns the new state and the event it raised, if any."""
    if window.verdict == "insufficient":
        return state, None

    def event(kind: Literal["drift_started", "drift_cleared"]) -> DriftEvent:
        return DriftEvent.project(window, kind=kind, model=model, version=version)

    if not state.drifted:
        streak = state.enter_streak + 1 if window.verdict == "drift" else 0
        if streak >= thresholds.enter_windows:
            return MonitorState(drifted=True, since=window.window_start), event("drift_started")
        return state.model_copy(update={"enter_streak": streak}), None
    clear = state.clear_streak + 1 if not window.holding else 0
    if clear >= thresholds.clear_windows:
        return MonitorState(), event("drift_cleared")
    return state.model_copy(update={"clear_streak": clear}), None


def detect_crossings(
    windows: Iterable[WindowDrift],
    thresholds: DriftThresholds,
    *,
    model: str,
    version: int,
    state: MonitorState | None = None,
) -> tuple[list[DriftEvent], MonitorState]:
    """Events raised by ``windows`` (sorted by start here), and the state after the last one."""
    st = state or MonitorState()
    events: list[DriftEvent] = []
    for w in sorted(windows, key=lambda w: w.window_start):
        st, ev = step(st, w, thresholds, model=model, version=version)
        if ev is not None:
            events.append(ev)
    return events, st
