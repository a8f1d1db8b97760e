"""Fleet reports: merging by device, version and window; crossings with hysteresis; bad records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgefleet.drift import DriftSummary
from server.drift import (
    DriftRecord,
    DriftThresholds,
    DriftVerdicts,
    MonitorState,
    WindowDrift,
    detect_crossings,
    drift_by_device,
    drift_by_feature,
    fleet_drift,
    fleet_over_time,
    merge_records,
    step,
)
from tests.server.drift.support import MODEL, VERSION, gaussian_reference, summarise

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
SHIFTED_HOURS = {3, 4, 5}


@pytest.fixture(scope="module")
def fleet() -> tuple:
    """4 devices x 8 hourly windows of 150 rows; hours 3-5 have f0 shifted by 0.5 sd."""
    ref, _ = gaussian_reference(6)
    rng = np.random.default_rng(11)
    records = []
    for hour in range(8):
        for device in DEVICES:
            x = rng.normal(size=(150, 6))
            if hour in SHIFTED_HOURS:
                x[:, 0] += 0.5
            start = T0 + hour * HOUR + timedelta(minutes=5)
            records.append(
                DriftRecord(
                    device, MODEL, VERSION, start, start + timedelta(minutes=50), summarise(ref, x)
                )
            )
    return ref, records


def test_fleet_over_time_and_one_crossing_each_way(fleet: tuple) -> None:
    ref, records = fleet
    report = fleet_over_time(records, ref, model=MODEL, version=VERSION, bucket=HOUR)
    assert [w.window_start for w in report.windows] == [T0 + h * HOUR for h in range(8)]
    assert all(w.n_devices == 4 and w.n_reports == 4 and w.n_samples == 600 for w in report.windows)
    verdicts = [w.verdict for w in report.windows]
    assert verdicts == ["drift" if h in SHIFTED_HOURS else "no_drift" for h in range(8)]
    assert all(w.drifted_features == ["f0"] for w in report.windows if w.verdict == "drift")
    assert [(e.kind, e.window_start) for e in report.events] == [
        ("drift_started", T0 + 3 * HOUR),
        ("drift_cleared", T0 + 7 * HOUR),
    ]
    assert report.state == MonitorState() and report.rejected == []
    assert all(w.verdicts.input == w.verdict for w in report.windows)
    assert {w.verdicts.performance for w in report.windows} == {"insufficient"}  # no labels
    # one device window alone (150 rows) is judged; below a model's min_samples it is not
    alone = fleet_over_time(records[:1], ref, model=MODEL, version=VERSION, bucket=HOUR)
    assert alone.windows[0].verdict == "no_drift" and alone.events == []
    strict = DriftThresholds(min_samples=200)
    alone = fleet_over_time(
        records[:1], ref, model=MODEL, version=VERSION, bucket=HOUR, thresholds=strict
    )
    assert alone.windows[0].verdict == "insufficient" and alone.events == []


def test_incremental_steps_equal_the_batch(fleet: tuple) -> None:
    ref, records = fleet
    th = DriftThresholds()
    windows = fleet_over_time(records, ref, model=MODEL, version=VERSION, bucket=HOUR).windows
    state, events = MonitorState(), []
    for w in windows:
        state, raised = step(state, w, th, model=MODEL, version=VERSION)
        events += raised
    assert (events, state) == detect_crossings(windows, th, model=MODEL, version=VERSION)
    first = fleet_over_time(records[:16], ref, model=MODEL, version=VERSION, bucket=HOUR)
    rest = fleet_over_time(
        records[16:], ref, model=MODEL, version=VERSION, bucket=HOUR, state=first.state
    )
    assert first.events + rest.events == events


def _window(
    verdict: str, holding: bool, hour: int, performance: str = "insufficient"
) -> WindowDrift:
    return WindowDrift(
        window_start=T0 + hour * HOUR,
        window_end=T0 + (hour + 1) * HOUR,
        n_devices=1,
        n_reports=1,
        n_samples=500,
        verdict=verdict,  # type: ignore[arg-type]
        reason="",
        share_drifted=0.0,
        max_psi=0.0,
        holding=holding,
        drifted_features=[],
        verdicts=DriftVerdicts(
            input=verdict,  # type: ignore[arg-type]
            performance=performance,  # type: ignore[arg-type]
            label_prior="insufficient",
        ),
    )


def test_hysteresis_needs_clear_windows_and_ignores_insufficient_ones() -> None:
    th = DriftThresholds(enter_windows=2, clear_windows=2)
    seq = [
        ("drift", True),
        ("no_drift", False),
        ("drift", True),
        ("insufficient", False),
        ("drift", True),
        ("no_drift", True),
        ("no_drift", False),
        ("insufficient", False),
        ("no_drift", True),
        ("no_drift", False),
        ("no_drift", False),
        ("drift", True),
    ]
    windows = [_window(v, h, i) for i, (v, h) in enumerate(seq)]
    events, state = detect_crossings(windows, th, model=MODEL, version=VERSION)
    # enters on the 2nd consecutive drift window (hour 4: the insufficient one does not count),
    # a holding window resets the clear streak, and it clears after hours 9 and 10
    assert [(e.kind, e.window_start.hour - T0.hour) for e in events] == [
        ("drift_started", 4),
        ("drift_cleared", 10),
    ]
    assert state == MonitorState(enter_streak=1)


def test_performance_drift_has_its_own_crossings() -> None:
    th = DriftThresholds(enter_windows=1, clear_windows=2)
    seq = ["no_drift", "drift", "insufficient", "drift", "no_drift", "no_drift", "drift"]
    windows = [_window("no_drift", False, i, performance=p) for i, p in enumerate(seq)]
    events, state = detect_crossings(windows, th, model=MODEL, version=VERSION)
    assert [(e.signal, e.kind, e.window_start.hour - T0.hour) for e in events] == [
        ("performance", "drift_started", 1),
        ("performance", "drift_cleared", 5),
        ("performance", "drift_started", 6),
    ]
    assert not state.drifted and state.performance.drifted
    assert state.drifted_signals == ["performance"]


def test_per_device_report_finds_the_faulty_device() -> None:
    ref, _ = gaussian_reference(6)
    rng = np.random.default_rng(12)
    records = []
    for hour in range(4):
        for device in DEVICES:
            x = rng.normal(size=(150, 6))
            if device == "dev-c":
                x[:, 2] = x[:, 2] * 2.0  # a miscalibrated sensor on one device
            start = T0 + hour * HOUR
            records.append(
                DriftRecord(device, MODEL, VERSION, start, start + HOUR, summarise(ref, x))
            )
    report = drift_by_device(records, ref, model=MODEL, version=VERSION)
    assert [d.device_id for d in report.devices] == list(DEVICES)
    assert {d.device_id: d.verdict for d in report.devices} == {
        "dev-a": "no_drift",
        "dev-b": "no_drift",
        "dev-c": "drift",
        "dev-d": "no_drift",
    }
    dev_c = report.devices[2]
    assert dev_c.drifted_features == ["f2"] and dev_c.n_reports == 4 and dev_c.n_samples == 600
    assert (dev_c.first_window_start, dev_c.last_window_end) == (T0, T0 + 4 * HOUR)


def test_per_feature_series(fleet: tuple) -> None:
    ref, records = fleet
    report = drift_by_feature(
        records, ref, model=MODEL, version=VERSION, bucket=HOUR, features=["f0", "f1"]
    )
    f0, f1 = report.features
    assert (f0.name, f1.name) == ("f0", "f1")
    assert [p.status for p in f0.points] == [
        "drift" if h in SHIFTED_HOURS else "ok" for h in range(8)
    ]
    assert {p.status for p in f1.points} == {"ok"}
    assert all(p.n == 600 for p in f0.points)
    with pytest.raises(ValueError, match="unknown features"):
        drift_by_feature(records, ref, model=MODEL, version=VERSION, features=["nope"])


def test_bad_records_are_rejected_without_touching_the_rest(fleet: tuple) -> None:
    ref, records = fleet
    other_ref, _ = gaussian_reference(6, seed=99)
    start = T0 + 3 * HOUR
    bad = [
        DriftRecord(
            "dev-x", MODEL, VERSION, start, start + HOUR, summarise(other_ref, np.zeros((300, 6)))
        ),  # other bins
        DriftRecord(
            "dev-y",
            MODEL,
            VERSION,
            start,
            start + HOUR,
            summarise(ref, np.zeros((300, 6)), version=VERSION + 1),
        ),  # mislabelled
        DriftRecord(
            "dev-z", MODEL, VERSION, start + HOUR, start, summarise(ref, np.zeros((300, 6)))
        ),  # window ends before it starts
    ]
    other_model = DriftRecord(
        "dev-q",
        "other",
        1,
        start,
        start + HOUR,
        summarise(ref, np.zeros((300, 6)), model="other", version=1),
    )
    mixed = [*records[:13], *bad, other_model, *records[13:]]
    clean = fleet_over_time(records, ref, model=MODEL, version=VERSION, bucket=HOUR)
    report = fleet_over_time(mixed, ref, model=MODEL, version=VERSION, bucket=HOUR)
    assert report.windows == clean.windows and report.events == clean.events
    assert [r.device_id for r in report.rejected] == ["dev-x", "dev-y", "dev-z"]
    assert "do not match the reference" in report.rejected[0].reason
    assert "record says" in report.rejected[1].reason
    merged, rejected = merge_records(mixed, ref, model=MODEL, version=VERSION)
    assert merged.n == 4 * 8 * 150 and len(rejected) == 3
    assert merged == DriftSummary.merge_all(r.summary for r in records)
    whole = fleet_drift(mixed, ref, model=MODEL, version=VERSION)
    assert whole == fleet_drift(records, ref, model=MODEL, version=VERSION)
    # 3 shifted hours of 8, diluted over the whole period: a real shift of bias-corrected PSI
    # about (3/8)² · 0.22 = 0.03, above the floor (0.02), which the 4,800 rows resolve
    assert whole.verdict == "drift" and whole.drifted_features == ["f0"]
    assert drift_by_device(mixed, ref, model=MODEL, version=VERSION).rejected == report.rejected


def test_naive_times_are_utc_and_buckets_are_aligned(fleet: tuple) -> None:
    ref, records = fleet
    naive = [
        r._replace(
            window_start=r.window_start.replace(tzinfo=None),
            window_end=r.window_end.replace(tzinfo=None),
        )
        for r in records
    ]
    a = fleet_over_time(naive, ref, model=MODEL, version=VERSION, bucket=4 * HOUR)
    b = fleet_over_time(records, ref, model=MODEL, version=VERSION, bucket=4 * HOUR)
    assert a.windows == b.windows
    assert [w.window_start for w in a.windows] == [T0, T0 + 4 * HOUR]
    with pytest.raises(ValueError, match="positive"):
        fleet_over_time(records, ref, model=MODEL, version=VERSION, bucket=timedelta(0))
