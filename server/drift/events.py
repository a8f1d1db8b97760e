"""Threshold crossings of a model's fleet drift, with hysteresis, for each drift signal.

Each signal (:data:`~server.drift.verdicts.SIGNALS`: ``input``, ``performance``,
``label_prior``) of a model version is in one of two states, *clear* or *drifted*. Its fleet's
windows, in time order, move it:

* clear → drifted after ``enter_windows`` consecutive windows whose verdict for that signal is
  ``drift`` (a ``drift_started`` event of that signal, stamped with the window that completed the
  streak);
* drifted → clear after ``clear_windows`` consecutive windows that judged the signal and found
  it clear: for ``input``, windows that are not even *holding* (no test passes the laxer exit
  rule, see :class:`~server.drift.DriftThresholds`); for the label-based signals, windows whose
  verdict is ``no_drift`` (a ``drift_cleared`` event).

A window that is ``insufficient`` for a signal (too few samples or labels) and gaps leave that
signal's state and streaks unchanged. The state is a small pydantic model: a caller that sees
windows one at a time (the telemetry intake, after each closed window) persists it and calls
:func:`step`; a caller with a whole series calls :func:`detect_crossings`. The ``input``
signal's state is kept in :class:`MonitorState`'s own fields (``drifted``, ``since``, …), the
others in its ``performance`` and ``label_prior`` members.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from server.drift.base import ReportModel, Verdict
from server.drift.thresholds import DriftThresholds
from server.drift.verdicts import SIGNALS, DriftVerdicts, Signal

EventKind = Literal["drift_started", "drift_cleared"]


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
    verdicts: DriftVerdicts


class DriftEvent(ReportModel):
    """A model version's fleet drift crossed its threshold (consumed by rounds and rollouts)."""

    kind: EventKind
    signal: Signal = "input"
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    share_drifted: float
    max_psi: float | None
    drifted_features: list[str]


class TrackState(ReportModel):
    """Hysteresis state of one signal."""

    drifted: bool = False
    enter_streak: int = 0
    clear_streak: int = 0
    since: datetime | None = None


class MonitorState(ReportModel):
    """Hysteresis state of one model version (persist it between calls to :func:`step`).

    ``drifted``, ``enter_streak``, ``clear_streak`` and ``since`` are the ``input`` signal's.
    """

    drifted: bool = False
    enter_streak: int = 0
    clear_streak: int = 0
    since: datetime | None = None
    performance: TrackState = TrackState()
    label_prior: TrackState = TrackState()

    def track(self, signal: Signal) -> TrackState:
        """The state of ``signal``."""
        if signal == "input":
            return TrackState.project(self)
        track: TrackState = getattr(self, signal)
        return track

    def with_track(self, signal: Signal, track: TrackState) -> MonitorState:
        """A copy with ``signal``'s state replaced."""
        if signal == "input":
            return self.model_copy(update=track.model_dump())
        return self.model_copy(update={signal: track})

    @property
    def drifted_signals(self) -> list[Signal]:
        """The signals currently in the drifted state."""
        return [s for s in SIGNALS if self.track(s).drifted]


def _advance(
    track: TrackState, window: WindowDrift, signal: Signal, thresholds: DriftThresholds
) -> tuple[TrackState, EventKind | None]:
    verdict = window.verdicts.of(signal)
    if verdict == "insufficient":
        return track, None
    if not track.drifted:
        streak = track.enter_streak + 1 if verdict == "drift" else 0
        if streak >= thresholds.enter_windows:
            return TrackState(drifted=True, since=window.window_start), "drift_started"
        return track.model_copy(update={"enter_streak": streak}), None
    clear = not window.holding if signal == "input" else verdict == "no_drift"
    streak = track.clear_streak + 1 if clear else 0
    if streak >= thresholds.clear_windows:
        return TrackState(), "drift_cleared"
    return track.model_copy(update={"clear_streak": streak}), None


def step(
    state: MonitorState,
    window: WindowDrift,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: int,
) -> tuple[MonitorState, list[DriftEvent]]:
    """Advance every signal by one window; returns the new state and the events it raised."""
    events = []
    for signal in SIGNALS:
        track, kind = _advance(state.track(signal), window, signal, thresholds)
        state = state.with_track(signal, track)
        if kind is not None:
            events.append(
                DriftEvent.project(window, kind=kind, signal=signal, model=model, version=version)
            )
    return state, events


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
        st, raised = step(st, w, thresholds, model=model, version=version)
        events.extend(raised)
    return events, st
