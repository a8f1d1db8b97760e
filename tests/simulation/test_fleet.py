"""The whole fleet end to end on 127.0.0.1, one fleet for every check: real server, agents,
SuperLink and SuperNodes, the drift controller, the server's rollout controller.

:func:`simulation.fleet.run_fleet` runs the whole loop at small scale — 3 agents, 2 rounds,
device 0's inputs brightened after start — plus one adversarial SuperNode (``hostile_app.py``:
the agent's real ClientApp whose update is corrupted, wrong shapes in round 1 and x1e6 in round
2) beside the real agents. The fleet must:

* start the federated run only after the injected drift; publish versions with lineage that
  beat the initial one, refuse the adversarial updates and go on; move ``canary`` only through
  the gate (``production`` untouched by the run); report drift per device;
* promote the run's candidate step by step on the devices' evidence, every device ending on
  it; roll the scrambled candidate back by the device-accuracy guard, no device left on it;
  improve the drifted device's accuracy; leave no process running.

Afterwards the server, restarted on the fleet's database, serves the promoted version's model
card with its lineage, evaluation and the rollout that promoted it
(``tests/registry/cards_support.py``). A failing test prints the fleet's summary (its timeline
with each rollout step's guard evidence; ``tests/simulation/conftest.py``).

Covered elsewhere, not repeated here: NaN updates, a too-small round and resuming a restarted
run on real SuperLink/SuperNode processes (``tests/aggregation/test_deployment.py``, test
ClientApp) and in memory (``tests/aggregation/test_federation.py``, ``test_rounds.py``); an
operator's approval on a card (``tests/registry/test_cards.py``).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.datasets import Dataset
from simulation.fleet import DEFAULT_APP, FleetConfig, run_fleet
from simulation.fleet_report import FleetReport
from simulation.processes import descendants

REPO = Path(__file__).resolve().parents[2]
GATE_MAX_DROP = 0.01
TRAFFIC = 250


def hostile_app_dir(root: Path) -> Path:
    """The fleet's Flower app with the ClientApp swapped for ``hostile_app`` (test only)."""
    app = root / "app"
    app.mkdir()
    text = (DEFAULT_APP / "pyproject.toml").read_text()
    assert 'clientapp = "edge_client.flower_client:app"' in text
    (app / "pyproject.toml").write_text(
        text.replace('clientapp = "edge_client.flower_client:app"',
                     'clientapp = "fleetclient:app"'))
    (app / "fleetclient.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.simulation import hostile_app

        app = hostile_app.app
        """))
    return app


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetReport]:
    root = tmp_path_factory.mktemp("fleet")
    before = set(descendants(os.getpid()))
    work = root / "work"
    config = FleetConfig(
        workdir=work, n_agents=3, rounds=2, traffic=TRAFFIC, gate_max_drop=GATE_MAX_DROP,
        app_dir=hostile_app_dir(root), min_reports=2, timeout_s=1500, loop=True,
        # the adversary trains on device 0's labels (read-only, as every SuperNode does)
        extra_nodes=[{"data-dir": str(work / "devices" / "fleet-device-0"),
                      "eligibility": "always", "hostile": "yes"}])
    report = run_fleet(config)
    report.survivors += [pid for pid, _ in set(descendants(os.getpid())) - before]
    print(report.render())
    yield report
    shutil.rmtree(root, ignore_errors=True)


def at(report: FleetReport, what: str) -> float:
    assert report.loop is not None
    return next(e.at for e in report.loop.timeline if e.what == what)


# --- the federated run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_the_fleet_publishes_better_versions_with_lineage(fleet: FleetReport) -> None:
    assert fleet.ok, fleet.render()
    assert fleet.run_status.startswith("finished:completed")
    assert fleet.loop is not None and fleet.loop.before_version == 1
    initial = fleet.versions[0]
    assert initial.version == 1 and initial.round is None
    assert fleet.loop.aliases_after_run["production"] == 1  # production when the run ended
    assert fleet.initial_accuracy is not None and 0.4 < fleet.initial_accuracy < 0.85
    rounds = fleet.new_versions
    assert [v.round for v in rounds] == [1, 2]
    parent = initial.version
    for v in rounds:  # a chain: each round's version derives from the previous one
        assert v.parent == parent and v.run == "fleet" and v.strategy == "fedavg"
        assert v.clients == 3  # the three agents; the adversary was refused
        parent = v.version
    assert rounds[-1].accuracy is not None
    assert rounds[-1].accuracy > fleet.initial_accuracy + 0.05, fleet.render()


@pytest.mark.slow
def test_adversarial_updates_are_refused_and_the_run_goes_on(fleet: FleetReport) -> None:
    by_round = {v.round: v for v in fleet.new_versions}
    assert by_round[1].refused_reasons == {"shape": 1}, fleet.render()
    assert by_round[2].refused_reasons == {"norm": 1}, fleet.render()
    assert len(fleet.rounds) == 2 and all(" ok: 4/4 replied" in r for r in fleet.rounds)


@pytest.mark.slow
def test_canary_moves_only_through_the_gate(fleet: FleetReport) -> None:
    """As the run left them (before any rollout): the gate never touches production, and
    ``canary`` names the newest version within the gate's tolerance of production."""
    assert fleet.loop is not None
    after_run = fleet.loop.aliases_after_run
    assert after_run["production"] == 1
    assert fleet.initial_accuracy is not None
    floor = fleet.initial_accuracy - GATE_MAX_DROP
    passed = [v.version for v in fleet.new_versions if (v.accuracy or 0) >= floor]
    assert passed, fleet.render()
    assert after_run.get("canary") == passed[-1]


@pytest.mark.slow
def test_drift_is_reported_per_device(fleet: FleetReport) -> None:
    drift = {d.device_id: d.drift for d in fleet.devices}
    assert set(drift) == {"fleet-device-0", "fleet-device-1", "fleet-device-2"}
    for d in fleet.devices:
        assert d.drift is not None and d.drift["n_samples"] >= TRAFFIC
        assert d.answered == {"local": TRAFFIC}  # every request answered on the device
    shifted = drift["fleet-device-0"]
    assert shifted is not None and shifted["verdict"] == "drift"
    others = [drift[f"fleet-device-{i}"] for i in (1, 2)]
    assert all(shifted["max_psi"] > o["max_psi"] for o in others if o is not None)  # type: ignore[index]


# --- the loop: drift, run, rollouts --------------------------------------------------------------
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
    assert [e["step"] for e in passes] == [0, 1, 2]  # 25, 50, 100 % of the fleet
    for e in passes:  # each passed on evidence: every guard decided "pass"
        assert {g["decision"] for g in e["evidence"]["guards"]} == {"pass"}
        assert e["evidence"]["evidence"]["candidate"]["devices"] >= 1


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
    # server, plan build, 3 enrolments, 3 agents, SuperLink, 4 SuperNodes, flwr commands, and the
    # app processes Flower spawned under them
    assert len(fleet.pids) >= 13
    assert not set(fleet.pids) & {pid for pid, _ in descendants(os.getpid())}
    with pytest.raises(httpx.TransportError):  # the agents' local endpoints are gone
        httpx.get(f"http://127.0.0.1:{_any_port(fleet)}/v2/health/live", timeout=2)


def _any_port(fleet: FleetReport) -> int:
    text = (fleet.logs / "agent-fleet-device-0.log").read_text()
    return int(text.split("local inference endpoint on http://127.0.0.1:", 1)[1].split()[0])


# --- afterwards: the restarted server's model card -----------------------------------------------
@pytest.mark.slow
def test_the_promoted_version_has_a_card_with_lineage_evaluation_and_its_rollout(
    fleet: FleetReport, digits_data: Dataset
) -> None:
    """The server restarted on the fleet's database: the audit trail is intact, and the round
    the fleet's guarded rollout promoted has a card that says so."""
    from registry.rollouts.machine import CONTROLLER
    from tests.registry.cards_support import read_promoted_card

    assert fleet.loop is not None and fleet.loop.good is not None
    good = fleet.loop.good
    (promoted,) = [v for v in fleet.new_versions if v.version == good.candidate]
    got = read_promoted_card(fleet.workdir, fleet.model, promoted.version,
                             digits_data.x_test, digits_data.y_test)
    assert got.verify["ok"], got.verify
    assert [(r["action"], r["target"]) for r in got.runs] == [
        ("run.start", f"{fleet.model}/run/fleet"), ("run.end", f"{fleet.model}/run/fleet")]
    assert got.runs[-1]["after"]["outcome"] == "completed"
    lineage, evaluation, promotion = (got.card[k] for k in ("lineage", "evaluation", "promotion"))
    run = lineage["federated"]
    assert lineage["kind"] == "federated" and run["run"] == "fleet" and run["strategy"] == "fedavg"
    assert [(r["version"], r["round"], r["clients"]) for r in run["rounds"]] == [
        (v.version, v.round, v.clients) for v in fleet.new_versions]
    assert run["participations"] == sum(v.clients or 0 for v in fleet.new_versions)
    assert run["started_by"].startswith("admin:") and run["ended"] == "completed"
    assert evaluation["holdout"]["accuracy"] == pytest.approx(promoted.accuracy)
    devices = {d["version"]: d for d in evaluation["devices"]}
    assert devices[1]["devices"] == 3 and devices[1]["labelled"] > 0  # the agents' own labels
    assert devices[promoted.version]["devices"] == 3  # every device ran it
    assert devices[promoted.version]["labelled"] > 0  # the devices' evidence of the rollout
    assert devices[promoted.version]["feedback_labelled"] > 0  # REST feedback after restart
    assert [c["label"] for c in evaluation["per_class"]] == [str(i) for i in range(10)]
    assert sum(c["rest_predictions"] for c in evaluation["per_class"]) > 0
    assert sum(c["rest_labelled"] or 0 for c in evaluation["per_class"]) == devices[
        promoted.version]["feedback_labelled"]
    ((rollout),) = promotion["rollouts"]
    assert rollout["id"] == good.id and rollout["state"] == "promoted"
    assert rollout["approved_by"] == [] and rollout["promoted_by"] == CONTROLLER
    assert rollout["created_by"].startswith("admin:") and promotion["production_since"]
    starter = rollout["created_by"]
    assert [(r["action"], r["actor"]) for r in got.rollout_trail] == [
        ("rollout.start", starter), ("rollout.step", starter), ("rollout.step", CONTROLLER),
        ("rollout.step", CONTROLLER), ("rollout.promote", CONTROLLER)]
    assert f"# Model card: {fleet.model} v{promoted.version}" in got.markdown
