"""The drift-triggered controller: threshold crossing, schedule, cooldown, bounded loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregation.controller import (
    ControllerPolicy,
    ControllerState,
    DriftController,
    FleetDrift,
    decide,
)
from aggregation.errors import RegistryUnavailable, SettingsError

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = ControllerPolicy(schedule_every=timedelta(hours=24), cooldown=timedelta(hours=1))


def drift(score: float, threshold: float = 0.3) -> FleetDrift:
    return FleetDrift.from_score("digits", score, threshold)


def test_crossing_the_threshold_starts_a_run() -> None:
    state = ControllerState(since=T0)
    d, state = decide(POLICY, state, T0 + timedelta(minutes=1), drift(0.1))
    assert not d.start and d.reason == "idle"
    d, state = decide(POLICY, state, T0 + timedelta(minutes=2), drift(0.35))
    assert d.start and d.reason == "drift"
    assert state.last_start == T0 + timedelta(minutes=2) and not state.armed


def test_staying_above_the_threshold_does_not_retrigger_until_rearmed() -> None:
    state = ControllerState(since=T0)
    _, state = decide(POLICY, state, T0, drift(0.5))
    for h in (2, 3, 4):  # past the cooldown, still drifted: no new run
        d, state = decide(POLICY, state, T0 + timedelta(hours=h), drift(0.5))
        assert not d.start
    _, state = decide(POLICY, state, T0 + timedelta(hours=5), drift(0.2))  # cleared: re-arm
    assert state.armed
    d, _ = decide(POLICY, state, T0 + timedelta(hours=6), drift(0.4))
    assert d.start and d.reason == "drift"


def test_performance_drift_or_label_shift_alone_starts_a_run() -> None:
    for flags in ({"performance_drifted": True}, {"label_shift": True}):
        state = ControllerState(since=T0)
        verdict = FleetDrift("digits", drifted=False, **flags)  # type: ignore[arg-type]
        d, state = decide(POLICY, state, T0 + timedelta(minutes=1), verdict)
        assert d.start and d.reason == "drift" and verdict.signals[0] in d.detail
        d, state = decide(POLICY, state, T0 + timedelta(hours=2), verdict)
        assert not d.start and not state.armed  # still drifted: one crossing, one run
        d, state = decide(POLICY, state, T0 + timedelta(hours=3), FleetDrift("digits", False))
        assert state.armed


def test_cooldown_blocks_any_start_and_keeps_the_trigger() -> None:
    state = ControllerState(since=T0, last_start=T0)
    d, state = decide(POLICY, state, T0 + timedelta(minutes=30), drift(0.9))
    assert not d.start and d.reason == "cooldown" and state.armed
    d, _ = decide(POLICY, state, T0 + timedelta(minutes=61), drift(0.9))
    assert d.start and d.reason == "drift"


def test_schedule_starts_a_run_without_drift() -> None:
    state = ControllerState(since=T0)
    d, state = decide(POLICY, state, T0 + timedelta(hours=23), None)
    assert not d.start and d.reason == "no-data"
    d, state = decide(POLICY, state, T0 + timedelta(hours=24), drift(0.0))
    assert d.start and d.reason == "schedule"
    d, _ = decide(POLICY, state, T0 + timedelta(hours=47), drift(0.0))
    assert not d.start
    no_schedule = ControllerPolicy(schedule_every=None)
    d, _ = decide(no_schedule, ControllerState(since=T0), T0 + timedelta(days=30), drift(0.0))
    assert not d.start


@pytest.mark.parametrize("kwargs", [{"schedule_every": timedelta(0)},
                                    {"cooldown": timedelta(seconds=-1)}])
def test_policy_is_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        ControllerPolicy(**kwargs)  # type: ignore[arg-type]


class Source:
    """A scripted fleet-drift source (one reading per step; an exception is raised)."""

    def __init__(self, readings: list[FleetDrift | Exception | None]) -> None:
        self.readings = list(readings)

    def fleet_drift(self, model: str) -> FleetDrift | None:
        item = self.readings.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_controller_loop_is_bounded_and_launches_on_crossing() -> None:
    now = [T0]
    launched: list[tuple[str, str]] = []

    def launcher(model: str, reason: str) -> str:
        launched.append((model, reason))
        return f"run-{len(launched)}"

    def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    readings: list[FleetDrift | Exception | None] = [
        drift(0.1), RegistryUnavailable("down"), drift(0.5), drift(0.5), drift(0.1), drift(0.6)
    ]
    ctl = DriftController("digits", Source(readings), launcher, POLICY,
                          clock=lambda: now[0], sleep=sleep)
    decisions = ctl.run(max_iterations=6, interval_s=3600)
    assert [d.reason for d in decisions] == ["idle", "no-data", "drift", "idle", "idle", "drift"]
    assert launched == [("digits", "drift"), ("digits", "drift")]
    assert ctl.runs == ["run-1", "run-2"]
    with pytest.raises(SettingsError):
        ctl.run(max_iterations=0)


def test_a_failed_launch_is_retried_next_step() -> None:
    calls = []

    def launcher(model: str, reason: str) -> str:
        calls.append(reason)
        if len(calls) == 1:
            raise RegistryUnavailable("flwr run failed")
        return "run-ok"

    ctl = DriftController("digits", Source([drift(0.5), drift(0.5)]), launcher, POLICY,
                          clock=lambda: T0, sleep=lambda s: None)
    first, second = ctl.run(max_iterations=2)
    assert not first.start and "launch failed" in first.detail
    assert second.start and ctl.runs == ["run-ok"]


FAKE_FLWR = """
import json, sys
args = sys.argv[1:]
if "--fail" in args[args.index("--run-config") + 1]:
    print("SuperLink unreachable", file=sys.stderr)
    sys.exit(1)
print("some log line")
print(json.dumps({"success": True, "run-id": "4242", "args": args}))
"""


def test_flwr_run_launcher_submits_a_named_run(tmp_path) -> None:
    import sys

    from aggregation.controller import FlwrRunLauncher
    from aggregation.errors import RunLaunchError

    script = tmp_path / "flwr.py"
    script.write_text(FAKE_FLWR)
    launcher = FlwrRunLauncher(".", "local", {"num-rounds": 3, "strategy": "fedavg"},
                               flwr=(sys.executable, str(script)), clock=lambda: T0)
    run = launcher("digits", "drift")
    assert run == "digits-drift-20250101T000000 (flower run 4242)"
    failing = FlwrRunLauncher(".", "local", {"note": "--fail"},
                              flwr=(sys.executable, str(script)))
    with pytest.raises(RunLaunchError, match="SuperLink unreachable"):
        failing("digits", "schedule")
    missing = FlwrRunLauncher(".", "local", flwr=(str(tmp_path / "no-flwr"),))
    with pytest.raises(RunLaunchError):
        missing("digits", "schedule")
