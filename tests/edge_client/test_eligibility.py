"""Eligibility probes on real files (a fixture /proc and /sys tree) and on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_client.eligibility import (
    DeviceConditions,
    DeviceEligibility,
    EligibilityPolicy,
    LinuxProbes,
    SimulatedEligibility,
    should_continue,
)
from edge_client.settings import AgentSettings
from edgefleet.runtime import PlanRuntime

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def _tree(root: Path, *, load: float = 0.1, supplies: dict[str, dict[str, str]] | None = None,
          routes: Sequence[tuple[str, int]] = (("eth0", 100),)) -> LinuxProbes:
    proc = root / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "loadavg").write_text(f"{load} 0.5 0.5 1/100 123\n")
    lines = [f"{iface}\t00000000\t0102A8C0\t0003\t0\t0\t{metric}\t00000000\t0\t0\t0\n"
             for iface, metric in routes]
    (proc / "net" / "route").write_text(ROUTE_HEADER + "".join(lines))
    sysfs = root / "power_supply"
    sysfs.mkdir()
    for name, attrs in (supplies or {}).items():
        (sysfs / name).mkdir()
        for key, value in attrs.items():
            (sysfs / name / key).write_text(value + "\n")
    return LinuxProbes(proc, sysfs, use_nmcli=False)


def test_laptop_on_battery_is_not_eligible(tmp_path: Path) -> None:
    probes = _tree(tmp_path, supplies={
        "AC": {"type": "Mains", "online": "0"},
        "BAT0": {"type": "Battery", "capacity": "35", "status": "Discharging", "present": "1"},
    })
    c = probes.read()
    assert (c.external_power, c.battery_pct, c.battery_status) == (False, 35.0, "Discharging")
    verdict = EligibilityPolicy().evaluate(c)
    assert not verdict.eligible
    assert any("battery power" in r for r in verdict.reasons)
    assert any("35%" in r for r in verdict.reasons)


def test_charging_phone_without_mains_entry(tmp_path: Path) -> None:
    probes = _tree(tmp_path, supplies={
        "battery": {"type": "Battery", "capacity": "80", "status": "Charging"},
    }, routes=[("wlan0", 600)])
    c = probes.read()
    assert c.external_power is True and c.battery_pct == 80.0
    assert c.interface == "wlan0" and c.unmetered is None  # Wi-Fi: unknown → metered
    assert EligibilityPolicy().evaluate(c).reasons == ("network wlan0 is of unknown metering",)
    assert EligibilityPolicy(require_unmetered=False).evaluate(c).eligible


def test_no_battery_means_mains_powered(tmp_path: Path) -> None:
    c = _tree(tmp_path).read()
    assert (c.external_power, c.battery_pct) == (True, None)
    assert c.interface == "eth0" and c.unmetered is True
    assert EligibilityPolicy().evaluate(c).eligible


def test_busy_device_and_cellular_network(tmp_path: Path) -> None:
    import os

    cores = os.cpu_count() or 1
    c = _tree(tmp_path, load=cores * 2.0, routes=[("eth0", 200), ("wwan0", 50)]).read()
    assert c.load_per_core == 2.0
    assert c.interface == "wwan0" and c.unmetered is False  # the lowest metric wins
    reasons = EligibilityPolicy().evaluate(c).reasons
    assert any(r.startswith("busy") for r in reasons)
    assert "network wwan0 is metered" in reasons


def test_declared_unmetered_interfaces_are_authoritative(tmp_path: Path) -> None:
    probes = _tree(tmp_path, routes=[("wlan0", 0)])
    probes.unmetered_interfaces = ("wlan0",)
    assert probes.read().unmetered is True
    probes.unmetered_interfaces = ("eth1",)
    assert probes.read().unmetered is False


def test_this_machine_can_be_probed() -> None:
    verdict = DeviceEligibility.from_settings(AgentSettings()).check()
    assert verdict.conditions.load_per_core is not None
    assert isinstance(verdict.eligible, bool)
    assert verdict.to_dict()["conditions"]["load_per_core"] == verdict.conditions.load_per_core


def test_simulated_trace_and_should_continue() -> None:
    ok, busy = DeviceConditions(), DeviceConditions(load_per_core=5.0)
    sim = SimulatedEligibility(trace=[ok, ok, busy])
    ask = should_continue(sim)
    assert [ask(), ask(), ask(), ask()] == [True, True, False, False]
    sim = SimulatedEligibility()
    sim.set(external_power=False)
    assert not sim.check().eligible


def test_training_stops_between_steps_when_conditions_change(digits_plan_dir: Path) -> None:
    runtime = PlanRuntime.from_dir(digits_plan_dir)
    b = runtime.manifest.train_batch_size
    x = np.zeros((b * 10, 64), dtype=np.float32)
    y = np.zeros(b * 10, dtype=np.int64)
    ok, unplugged = DeviceConditions(), DeviceConditions(external_power=False)
    sim = SimulatedEligibility(trace=[ok] * 4 + [unplugged])
    result = runtime.fit(x, y, epochs=3, should_continue=should_continue(sim))
    assert result.stopped and result.steps == 4
