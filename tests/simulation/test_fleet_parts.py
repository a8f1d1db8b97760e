"""The fleet's parts that run without the fleet: partitions, shifts, shares, process clean-up,
the summary, the CLI's argument checks, the agent's telemetry naming the registry model, and
the loop's staged rollout body (every step holds its share of the fleet, at least one device)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simulation.cli import app as sim_cli
from simulation.errors import FleetError, Interrupted, PartitionError
from simulation.fleet import FleetConfig, default_shifts
from simulation.fleet_devices import STEP_SHARES, make_shares, ring_of
from simulation.fleet_report import FleetReport
from simulation.partition import apply_shift, dirichlet_partition, resample
from simulation.processes import ProcessSupervisor, alive, descendants


def test_dirichlet_partition_is_a_seeded_label_skewed_partition() -> None:
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(y, 5, alpha=0.3, seed=1, min_size=50)
    again = dirichlet_partition(y, 5, alpha=0.3, seed=1, min_size=50)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))  # disjoint and complete
    assert min(len(p) for p in parts) >= 50
    # skew: some device's most frequent class is far above the uniform 10 %
    top = max(np.bincount(y[p], minlength=10).max() / len(p) for p in parts)
    assert top > 0.3


@pytest.mark.parametrize("kwargs", [{"n_parts": 0}, {"alpha": 0.0}, {"min_size": 300}])
def test_impossible_partitions_are_refused(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"n_parts": 4, "alpha": 0.5, "min_size": 1, **kwargs}
    with pytest.raises(PartitionError):
        dirichlet_partition(np.repeat(np.arange(10), 100), int(args["n_parts"]),
                            alpha=args["alpha"], min_size=int(args["min_size"]))


def test_shifts_move_inputs_within_range_and_leave_the_original() -> None:
    x = np.linspace(0, 16, 64, dtype=np.float32).reshape(1, 64).repeat(20, axis=0)
    bright = apply_shift(x, "brightness")
    assert bright.mean() > x.mean() + 2 and bright.max() <= 16 and x.max() == 16
    noisy = apply_shift(x, "noise", seed=3)
    assert np.array_equal(noisy, apply_shift(x, "noise", seed=3)) and noisy.std() != x.std()
    assert np.array_equal(apply_shift(x, "none"), x)
    assert apply_shift(x, "contrast").std() < x.std()
    with pytest.raises(PartitionError):
        apply_shift(x, "warp")  # type: ignore[arg-type]
    with pytest.raises(PartitionError):
        resample(x[:0], 3)


def test_shares_are_disjoint_and_shifted_where_asked(digits_data) -> None:
    central, shares = make_shares(digits_data, 3, central_fraction=0.1, alpha=0.5,
                                  shifts=default_shifts(3), traffic=50, seed=0)
    assert [s.shift for s in shares] == ["brightness", "none", "none"]
    assert len(central) == round(0.1 * len(digits_data.y_train))
    assert sum(len(s.y) for s in shares) + len(central) == len(digits_data.y_train)
    assert all(s.traffic.shape == (50, 64) for s in shares)
    assert shares[0].x.mean() > shares[1].x.mean() + 2  # brightened inputs
    assert default_shifts(4) == {0: "brightness", 3: "noise"}


def test_fleet_config_is_checked() -> None:
    with pytest.raises(FleetError):
        FleetConfig(n_agents=0)
    with pytest.raises(FleetError):
        FleetConfig(n_agents=2, min_reports=3)


_SPAWNER = """
import subprocess, sys, time
# a grandchild in its own session: out of reach of the child's process group
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("spawned", flush=True)
time.sleep(120)
"""


def _wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.05)


def test_supervisor_stops_children_and_everything_they_spawned(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path, stop_timeout_s=5) as sup:
        child = sup.start("spawner", [sys.executable, "-c", _SPAWNER])
        _wait_for(child.log_path, "spawned")
        family = descendants(child.pid)
        assert len(family) == 2
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)  # its own group
    assert not any(alive(k) for k in family)
    assert child.proc.returncode is not None and sup.survivors() == []


def test_supervisor_bounds_commands_and_reports_their_output(tmp_path: Path) -> None:
    with ProcessSupervisor(tmp_path) as sup:
        code, tail = sup.run("ok", [sys.executable, "-c", "print('hello')"], timeout_s=30)
        assert (code, tail.strip()) == (0, "hello")
        code, tail = sup.run("slow", [sys.executable, "-c", "import time; time.sleep(60)"],
                             timeout_s=0.5)
        assert code == -1 and "timed out" in tail
        assert sup.children == [] and sup.survivors() == []


def test_a_termination_signal_becomes_interrupted_and_handlers_are_restored(
        tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    sup = ProcessSupervisor(tmp_path)
    sup.handle_signals()
    child = sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns
    finally:
        sup.close()
    assert child.proc.returncode is not None
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_refuses_bad_shifts_before_starting_anything() -> None:
    for args in (["--shift", "0=warp"], ["--shift", "9=noise"], ["--shift", "x"],
                 ["--agents", "2", "--shift", "2=noise"]):
        result = CliRunner().invoke(sim_cli, ["fleet", *args])
        assert result.exit_code == 2, (args, result.output)


def test_report_renders_a_failed_fleet(tmp_path: Path) -> None:
    report = FleetReport(workdir=tmp_path, logs=tmp_path / "logs", model="digits",
                         failure="the Flower run ended finished:failed", survivors=[123])
    text = report.render()
    assert "FAILED" in text and "finished:failed" in text and "123" in text
    assert str(tmp_path / "logs") in text and report.new_versions == []


@pytest.mark.parametrize("n_devices", [1, 2, 3, 4, 5, 8, 12])
def test_each_rollout_step_covers_its_share_of_the_fleet(n_devices: int) -> None:
    from edgefleet.rollouts import RolloutCreate
    from registry.rollouts.strategies import labels_match
    from simulation.fleet_loop import staged_body

    body = RolloutCreate.model_validate(staged_body("digits", 2, "t", bake_s=8, timeout_s=180))
    labels = [{"ring": str(ring_of(i, n_devices))} for i in range(n_devices)]
    assert body.strategy == "waves" and body.steps is not None
    for k, (step, share) in enumerate(zip(body.steps, STEP_SHARES, strict=True)):
        waves = [s.labels for s in body.steps[:k + 1]]  # waves are cumulative
        covered = sum(any(labels_match(lab, w) for w in waves) for lab in labels)
        assert covered == -(-share * n_devices // 100) >= 1, (step, labels)


def test_report_renders_a_rolled_back_loop_with_its_evidence(tmp_path: Path) -> None:
    from simulation.fleet_loop import LoopReport, RolloutRecord

    guard = {"kind": "device_accuracy", "decision": "wait",
             "reason": "too little data: device labelled accuracy candidate 0, baseline 1811 < 50"}
    evidence = {"verdict": "wait", "guards": [guard], "elapsed_s": 180.2, "evidence": {
        "candidate": {"version": 3, "devices": 0, "device_labelled": 0, "device_correct": 0},
        "baseline": {"version": 1, "devices": 3, "device_labelled": 1811, "device_correct": 998}}}
    rollback = {"at": "2026-12-01T15:16:42", "step": 0, "kind": "rollback",
                "to_state": "rolled_back", "evidence": evidence,
                "message": "timeout after 180 s: step 1 did not pass (waiting: device_accuracy)"}
    loop = LoopReport(good=RolloutRecord(1, 3, "rolled_back", [rollback]),
                      failure="the candidate v3 was not promoted")
    loop.note("rollout 1 rollback", "step 0: timeout after 180 s\nguard device_accuracy wait")
    text = FleetReport(workdir=tmp_path, logs=tmp_path, model="digits", loop=loop).render()
    assert "loop stopped: the candidate v3 was not promoted" in text
    assert "timeout after 180 s: step 1 did not pass" in text and guard["reason"] in text
    assert "candidate v3: 0 devices, 0 labelled" in text
    assert "baseline v1: 3 devices, 1811 labelled (998 correct)" in text
    assert loop.good is not None and loop.good.outcome.startswith("rolled_back: timeout")


def test_local_inference_telemetry_names_the_registry_model(tmp_path: Path,
                                                            digits_plan_dir: Path) -> None:
    """The registry model may be named otherwise than the plan (fleet: "digits" vs the plan's
    "digits-mlp"): reports and the ClientApp's cumulative drift must use the registry's name,
    or the server refuses the reports (404) and drops them for good."""
    from edge_client.agent import Agent
    from edge_client.models import ModelManager
    from edge_client.settings import AgentSettings
    from edgefleet.plan import PlanManifest

    manifest = PlanManifest.load(digits_plan_dir / "manifest.json")
    assert manifest.name != "registry-name"
    settings = AgentSettings(data_dir=tmp_path / "device", http_port=-1)
    ModelManager(settings.models_dir).install_dir(digits_plan_dir, "registry-name", 1)
    with Agent(settings) as agent:
        agent.predict(np.zeros((3, 64), dtype=np.float32))
        reports = agent.flush_telemetry()
        assert [(r.model, r.version, r.inference.local) for r in reports] == [
            ("registry-name", 1, 3)]
        assert agent.state.load_drift("registry-name", 1) is not None


def test_the_fleets_run_config_is_run_settings_the_app_accepts(tmp_path: Path) -> None:
    from edgefleet.run_settings import RunSettings, app_config_table
    from simulation.fleet import FIRST_CONTACT_S, fleet_run_settings

    config = fleet_run_settings(FleetConfig(), "http://127.0.0.1:1", 4,
                                tmp_path / "holdout.npz").run_config()
    assert set(config) <= set(app_config_table())  # flwr run may override only declared keys
    assert config["target-clients"] == config["min-nodes"] == 4
    assert config["query-timeout-s"] == FIRST_CONTACT_S and "train-timeout-s" not in config
    settings = RunSettings.from_run_config(config, env={})
    assert (settings.selection, settings.lr, settings.base_epochs) == ("drift", 0.1, 2)
    assert settings.max_extra_epochs == FleetConfig().max_extra_epochs == 2  # not the default 6
    assert config["max-extra-epochs"] == 2
    with pytest.raises(FleetError, match="run settings"):
        FleetConfig(lr=0.0)  # refused before anything starts
