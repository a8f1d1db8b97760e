"""The fleet trigger on a synthetic fleet: share affected × severity, labels or inputs, and the
controller re-arming once the fleet is healthy on a new version; a version's own reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.datasets import load_digits

from aggregation.controller import ControllerPolicy, ControllerState, FleetDrift, decide
from edgefleet.drift import (
    DriftAccumulator,
    DriftSummary,
    ReferenceProfile,
    build_reference,
    refreshed_reference,
)
from edgefleet.drift.baseline import Reading
from edgefleet.drift.impact import ImpactConfig, fleet_impact
from server.drift.fleet import DriftRecord
from server.drift.impact import fleet_impact as server_impact

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEVICES = 40


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, ReferenceProfile]:
    x, y = load_digits(return_X_y=True)
    return x, y, build_reference(x, y, [f"p{i}" for i in range(64)], 10)


def window(digits, device: int, hour: int, *, shift: float = 0.0, accuracy: float = 0.9,
           labelled: bool = True, version: int = 1) -> DriftSummary:
    """100 rows of a device; its model is right on an ``accuracy`` share of them."""
    x, y, ref = digits
    rng = np.random.default_rng([device, hour, version])
    pick = rng.integers(0, len(x), 100)
    right = rng.random(100) < accuracy
    predicted = np.where(right, y[pick], (y[pick] + 1) % 10)
    acc = DriftAccumulator(ref, model="m", version=version)
    acc.update(np.clip(x[pick] + shift, 0, 16), np.eye(10)[predicted],
               y[pick] if labelled else None)
    return acc.to_summary()


def fleet(digits, hours: int, drifted: set[int], start: int, **drift: float | bool
          ) -> list[DriftRecord]:
    labelled = bool(drift.pop("labelled", True))
    out = []
    for h in range(hours):
        for d in range(DEVICES):
            kw = drift if d in drifted and h >= start else {}
            t = T0 + timedelta(hours=h)
            out.append(DriftRecord(f"d{d:02}", "m", 1, t, t + timedelta(hours=1),
                                   window(digits, d, h, labelled=labelled, **kw)))
    return out


def test_a_costly_shift_on_a_tenth_of_the_fleet_triggers(digits) -> None:
    records = fleet(digits, 4, {0, 1, 2, 3}, 3, shift=4.0, accuracy=0.80)
    report = server_impact(records, digits[2], model="m", version=1)
    assert report.triggered and report.changed == 4 and report.affected == 4
    assert report.accuracy_drop == pytest.approx(0.10, abs=0.04)
    before = server_impact([r for r in records if r.window_start < T0 + timedelta(hours=3)],
                           digits[2], model="m", version=1)
    assert not before.triggered and before.impact == 0.0


def test_a_cheap_shift_does_not_trigger_even_on_a_third_of_the_fleet(digits) -> None:
    records = fleet(digits, 4, set(range(13)), 3, shift=1.0, accuracy=0.895)
    report = server_impact(records, digits[2], model="m", version=1)
    assert report.changed >= 10  # the inputs did move...
    assert not report.triggered  # ... at no cost worth a run
    assert not server_impact(fleet(digits, 4, set(), 3), digits[2], model="m",
                             version=1).triggered


def test_without_labels_the_input_effect_decides(digits) -> None:
    strong = fleet(digits, 4, {0, 1, 2, 3}, 3, shift=4.0, labelled=False)
    weak = fleet(digits, 4, set(range(12)), 3, shift=1.0, labelled=False)
    assert server_impact(strong, digits[2], model="m", version=1).triggered
    assert not server_impact(weak, digits[2], model="m", version=1).triggered


def test_impact_weighs_share_and_severity() -> None:
    def reading(change: float, drop: float | None) -> Reading:
        acc = None if drop is None else 0.9 - drop
        return Reading(100, change, 0.3, 0.9 if drop is not None else None, acc, 4000, 4000)

    cfg = ImpactConfig()
    few_badly = {f"d{i}": reading(2.0, 0.30 if i < 2 else None) for i in range(2)}
    few_badly |= {f"c{i}": reading(0.0, None) for i in range(38)}
    assert fleet_impact(few_badly, cfg).triggered  # 5 % of the fleet, 30 points lost
    many_slightly = {f"d{i}": reading(0.5, 0.01) for i in range(20)}
    many_slightly |= {f"c{i}": reading(0.0, None) for i in range(20)}
    assert not fleet_impact(many_slightly, cfg).triggered  # half the fleet, 1 point
    concept = {f"d{i}": reading(0.0, 0.2) for i in range(4)}  # same inputs, other labels
    concept |= {f"c{i}": reading(0.0, 0.0) for i in range(36)}
    assert fleet_impact(concept, cfg).triggered
    with pytest.raises(ValueError):
        ImpactConfig(min_impact=0.0)


def test_the_controller_rearms_once_the_fleet_is_healthy_on_a_new_version(digits) -> None:
    ref = digits[2]
    policy = ControllerPolicy(schedule_every=None, cooldown=timedelta(0))
    state = ControllerState(since=T0)
    drifted = set(range(8))
    records: list[DriftRecord] = []
    starts = []
    for h in range(12):
        version = 1 if h < 6 else 2  # the run's version is promoted in hour 6
        first, second = h >= 3, h >= 9  # two shifts: on v1, then on v2
        for d in range(DEVICES):
            shift = 4.0 if (d in drifted and first) else 0.0
            acc = 0.8 if (d in drifted and first and version == 1) else 0.9
            if d >= 30 and second:
                shift, acc = shift + 4.0, 0.75
            t = T0 + timedelta(hours=h)
            records.append(DriftRecord(f"d{d:02}", "m", version, t, t + timedelta(hours=1),
                                       window(digits, d, h, shift=shift, accuracy=acc,
                                              version=version)))
        report = server_impact(records, ref, model="m", version=version)
        reading = FleetDrift("m", report.triggered, report.share_affected, version,
                             impact=report.impact, impact_triggered=report.triggered)
        decision, state = decide(policy, state, T0 + timedelta(hours=h), reading)
        if decision.start:
            starts.append(h)
        if h == 5:
            assert reading.triggered and not state.armed  # still drifted on v1: one run only
        if h == 8:
            assert state.armed  # healthy on v2, whose baselines hold the new normal
    assert starts == [3, 9]


def test_a_version_carries_a_reference_merged_from_its_training_clients(digits) -> None:
    ref = digits[2]
    merged = DriftSummary.merge_all(window(digits, d, 0, shift=4.0) for d in range(10))
    own = refreshed_reference(ref, merged)
    assert own.fingerprint == ref.fingerprint  # devices' summaries still fit its bins
    window(digits, 99, 1).check_reference(own)
    assert own.n_samples == 1000
    assert own.features[20].mean == pytest.approx(merged.mean[20])
    assert own.features[20].mean > ref.features[20].mean
    shifted = window(digits, 50, 2, shift=4.0)
    from edgefleet.drift.effect import summary_shift

    assert summary_shift(shifted, own, own) < 0.2 < summary_shift(shifted, ref, ref)
