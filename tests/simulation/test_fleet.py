"""The whole fleet end to end on 127.0.0.1: real server, agents, SuperLink and SuperNodes.

:func:`simulation.fleet.run_fleet` at small scale — 3 agents (device 0's inputs brightened),
2 rounds — plus one adversarial SuperNode (``hostile_app.py``: the agent's real ClientApp whose
update is corrupted, wrong shapes in round 1 and x1e6 in round 2) beside the real agents. It
must publish versions with lineage that beat the initial one, refuse the adversarial updates
and go on, move ``canary`` only through the gate, report drift per device, and leave no process
running. Afterwards the server, restarted on the fleet's database, promotes the newest round by
an approved rollout and serves its model card (``tests/registry/cards_support.py``).

Covered elsewhere, not repeated here: NaN updates, a too-small round and resuming a restarted
run on real SuperLink/SuperNode processes (``tests/aggregation/test_deployment.py``, test
ClientApp) and in memory (``tests/aggregation/test_federation.py``, ``test_rounds.py``).
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
        app_dir=hostile_app_dir(root), min_reports=2, timeout_s=600,
        # the adversary trains on device 0's labels (read-only, as every SuperNode does)
        extra_nodes=[{"data-dir": str(work / "devices" / "fleet-device-0"),
                      "eligibility": "always", "hostile": "yes"}])
    report = run_fleet(config)
    report.survivors += [pid for pid, _ in set(descendants(os.getpid())) - before]
    print(report.render())
    yield report
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_the_fleet_publishes_better_versions_with_lineage(fleet: FleetReport) -> None:
    assert fleet.ok, fleet.render()
    assert fleet.run_status.startswith("finished:completed")
    initial = fleet.versions[0]
    assert initial.version == 1 and initial.round is None and "production" in initial.aliases
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
    assert fleet.aliases["production"] == 1  # the gate never touches production
    assert fleet.initial_accuracy is not None
    floor = fleet.initial_accuracy - GATE_MAX_DROP
    passed = [v.version for v in fleet.new_versions if (v.accuracy or 0) >= floor]
    assert passed, fleet.render()
    assert fleet.aliases.get("canary") == passed[-1]


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


@pytest.mark.slow
def test_the_newest_version_has_a_card_with_lineage_evaluation_and_its_rollout(
    fleet: FleetReport, digits_data: Dataset
) -> None:
    """The server restarted on the fleet's database: the audit trail is intact, and the newest
    round, promoted by a guarded rollout an operator approved, has a card that says so."""
    from tests.registry.cards_support import OPERATOR, promote_and_read_card

    newest = fleet.new_versions[-1]
    got = promote_and_read_card(fleet.workdir, fleet.model, newest.version,
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
    assert evaluation["holdout"]["accuracy"] == pytest.approx(newest.accuracy)
    devices = {d["version"]: d for d in evaluation["devices"]}
    assert devices[1]["devices"] == 3 and devices[1]["labelled"] > 0  # the agents' own labels
    assert devices[newest.version]["feedback_labelled"] > 0  # the canary's REST feedback
    assert [c["label"] for c in evaluation["per_class"]] == [str(i) for i in range(10)]
    assert sum(c["rest_predictions"] for c in evaluation["per_class"]) > 0
    assert sum(c["rest_labelled"] or 0 for c in evaluation["per_class"]) == devices[
        newest.version]["feedback_labelled"]
    ((rollout),) = promotion["rollouts"]
    approver = "admin:" + OPERATOR.split(":")[0]
    assert rollout["state"] == "promoted" and rollout["approved_by"] == [approver]
    assert rollout["promoted_by"] == approver and promotion["production_since"] is not None
    assert [(r["action"], r["actor"]) for r in got.rollout_trail] == [
        (f"rollout.{a}", approver) for a in ("start", "step", "approve", "promote")]
    assert f"# Model card: {fleet.model} v{newest.version}" in got.markdown
