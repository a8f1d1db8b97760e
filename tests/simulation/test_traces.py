"""Device traces: availability kinds, time zones, drop-out, tiers, simulated durations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulation.config import TierConfig, TracesConfig
from simulation.errors import ConfigError
from simulation.traces import Traces


def test_always() -> None:
    t = Traces(TracesConfig(), 5, 0)
    assert all(t.available(d, s) for d in range(5) for s in (0, 1e5))


def test_diurnal_follows_local_time() -> None:
    t = Traces(TracesConfig(availability="diurnal", window_start_h=22, window_end_h=6,
                            timezones=[0, 6]), 50, 0)
    for d in range(50):
        tz = t.devices[d].tz_h
        for hour in range(24):
            local = (hour + tz) % 24
            assert t.available(d, hour * 3600 + 60) == (local >= 22 or local < 6)
    assert {dev.tz_h for dev in t.devices} == {0, 6}


def test_onoff_share_and_sessions() -> None:
    cfg = TracesConfig(availability="onoff", mean_on_s=600, mean_off_s=1800)
    t = Traces(cfg, 200, 1)
    grid = np.arange(0, 200_000, 300.0)
    share = np.mean([[t.available(d, s) for s in grid] for d in range(200)])
    assert share == pytest.approx(0.25, abs=0.05)
    again = Traces(cfg, 200, 1)
    assert [again.available(3, s) for s in grid] == [t.available(3, s) for s in grid]
    changes = np.sum(np.diff([t.available(3, s) for s in grid]).astype(bool))
    assert changes > 20  # sessions, not a constant


def test_file_intervals_and_tiers(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("device,start_s,end_s\n0,0,100\n0,500,600\n1,50,60\n")
    (tmp_path / "t.csv").write_text("device,tier\n0,slow\n1,fast\n")
    cfg = TracesConfig(availability="file", path=str(tmp_path / "a.csv"),
                       tiers_path=str(tmp_path / "t.csv"),
                       tiers=[TierConfig(name="fast", step_s=0.01), TierConfig(name="slow",
                                                                               step_s=1.0)])
    t = Traces(cfg, 3, 0)
    assert [t.available(0, s) for s in (0, 99, 100, 550, 700)] == [True, True, False, True,
                                                                    False]
    assert not t.available(2, 10)  # no interval: never available
    assert t.devices[0].tier.name == "slow" and t.devices[1].tier.name == "fast"
    (tmp_path / "bad.csv").write_text("device,start\n0,1\n")
    with pytest.raises(ConfigError, match="needs columns"):
        Traces(TracesConfig(availability="file", path=str(tmp_path / "bad.csv")), 1, 0)


def test_dropout_rate_and_durations() -> None:
    cfg = TracesConfig(dropout=0.2, tiers=[TierConfig(name="a", share=3, step_s=0.1,
                                                      up_mbps=1, down_mbps=8),
                                           TierConfig(name="b", share=1, step_s=1.0)])
    t = Traces(cfg, 1000, 0)
    drops = np.mean([t.drops_out(d, r) for d in range(1000) for r in range(1, 4)])
    assert drops == pytest.approx(0.2, abs=0.03)
    assert np.mean([d.tier.name == "a" for d in t.devices]) == pytest.approx(0.75, abs=0.05)
    d = next(d for d in t.devices if d.tier.name == "a")
    # 10 steps at 0.1 s, 1 MB down at 8 Mbit/s (1 s), 1 MB up at 1 Mbit/s (8 s)
    assert t.duration(d.device, 10, 1_000_000, 1_000_000) == pytest.approx(10.0)
