"""The whole loop end to end on 127.0.0.1 (``edgefleet sim fleet``): real server, agents,
SuperLink and SuperNodes, the drift controller, the server's rollout controller.

At small scale (3 agents, device 0's inputs brightened after start, 2 rounds): the controller
starts the federated run only after the injected drift; the run's candidate is promoted step by
step on the devices' evidence and every device ends on it; the scrambled candidate is rolled
back by the device-accuracy guard with no device left on it; the drifted device's accuracy
improves; nothing is left running.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from simulation.fleet import FleetConfig, run_fleet
from simulation.fleet_report import FleetReport
from simulation.processes import descendants


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetReport]:
    root = tmp_path_factory.mktemp("loop")
    before = set(descendants(os.getpid()))
    config = FleetConfig(workdir=root / "work", n_agents=3, rounds=2, traffic=250, loop=True,
                         min_reports=2, timeout_s=1500)
    report = run_fleet(config)
    report.survivors += [pid for pid, _ in set(descendants(os.getpid())) - before]
    print(report.render())
    yield report
    shutil.rmtree(root, ignore_errors=True)


def at(report: FleetReport, what: str) -> float:
    assert report.loop is not None
    return next(e.at for e in report.loop.timeline if e.what == what)


@pytest.mark.slow
def test_drift_then_run_then_promotion_then_rollback(fleet: FleetReport) -> None:
    assert fleet.ok, fleet.render()
    loop = fleet.loop
    assert loop is not None and loop.good is not None and loop.bad is not None
    order = ["fleet healthy", "drift injected", "drift detected", "run started",
             "version published", f"rollout {loop.good.id} promoted",
             "broken version published", f"rollout {loop.bad.id} rolled_back"]
    times = [at(fleet, w) for w in order]
    assert times == sorted(times), loop.timeline
    assert fleet.run_status.startswith("finished:completed")
    assert [v.round for v in fleet.new_versions] == [1, 2]


@pytest.mark.slow
def test_the_good_candidate_is_promoted_step_by_step(fleet: FleetReport) -> None:
    loop = fleet.loop
    assert loop is not None and loop.good is not None
    good = loop.good
    assert good.state == "promoted" and fleet.aliases["production"] == good.candidate
    assert sorted(good.devices_on_candidate) == [d.device_id for d in fleet.devices]
    passes = [e for e in good.events if e["kind"] == "pass"]
    assert [e["step"] for e in passes] == [0, 1, 2]  # 25, 50, 100 %
    for e in passes:  # each passed on evidence: every guard decided "pass"
        assert {g["decision"] for g in e["evidence"]["guards"]} == {"pass"}


@pytest.mark.slow
def test_the_broken_candidate_is_rolled_back_by_its_guard(fleet: FleetReport) -> None:
    loop = fleet.loop
    assert loop is not None and loop.bad is not None and loop.good is not None
    bad = loop.bad
    assert bad.state == "rolled_back" and bad.devices_on_candidate == []
    assert fleet.aliases["production"] == loop.good.candidate
    (rollback,) = [e for e in bad.events if e["kind"] == "rollback"]
    tripped = [g["kind"] for g in rollback["evidence"]["guards"] if g["decision"] == "fail"]
    assert tripped == ["device_accuracy"] and "device_accuracy" in rollback["message"]


@pytest.mark.slow
def test_accuracy_improves_where_drift_was_injected(fleet: FleetReport) -> None:
    loop = fleet.loop
    assert loop is not None
    rows = {a.device_id: a for a in loop.accuracy}
    drifted = rows["fleet-device-0"]
    assert drifted.shift == "brightness" and drifted.after > drifted.before + 0.1
    assert all(a.after >= a.before - 0.02 for a in loop.accuracy), loop.accuracy
    assert "timeline (seconds since the loop began):" in fleet.render()


@pytest.mark.slow
def test_nothing_is_left_running(fleet: FleetReport) -> None:
    assert fleet.survivors == []
    assert not set(fleet.pids) & {pid for pid, _ in descendants(os.getpid())}
