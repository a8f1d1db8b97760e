"""When does the fleet trigger start a run? Shifts of measured cost on a simulated fleet.

``python -m simulation.trigger_eval [--seeds 0 1 2 3 4] [--labelled 1.0]`` takes the fleet of
``examples/steering.toml`` (digits, 40 clients, Dirichlet(0.5) label shares), deploys version 1
(the plan trained centrally on the clean training split), and has every device send one
telemetry window per round: the drift summary of ``rows`` inputs drawn from its current data,
with the deployed model's predictions and, for a ``labelled`` share of them, the true label. The
server's :func:`server.drift.impact.fleet_impact` weighs the windows of the version the devices
run and :func:`aggregation.controller.decide` decides, every round, as the controller would.

Each case drifts a share of the devices from round ``start`` on and reports the accuracy the
shift costs the drifted devices (the deployed model on their data, before and after), the rounds
from the shift to the first start (``never``), and any start before the shift (a false alarm).
The re-arm case lets the trigger fire, then "promotes" version 2 (version 1 fine-tuned on every
device's current data, its reference refreshed from their summaries:
:func:`edgefleet.drift.refreshed_reference`); devices switch to it, the controller must
re-arm on the healthy readings and fire again on a second shift.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from aggregation.controller import ControllerPolicy, ControllerState, FleetDrift, decide
from edgefleet.drift import DriftAccumulator, DriftSummary, ReferenceProfile, refreshed_reference
from edgefleet.drift.baseline import TELEMETRY_BASELINE, Baselines
from edgefleet.drift.impact import FleetImpact, fleet_impact
from edgefleet.runtime import PlanRuntime
from simulation.config import DriftConfig, Experiment, load_experiment
from simulation.errors import ExperimentError
from simulation.population import Population
from simulation.scenarios import FeatureStats, Scenario

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "steering.toml"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REARM = (5, 8, 13)  # first drift, promotion of version 2, second drift (rounds)
CASES: dict[str, dict[str, Any]] = {
    "brightness +8, 10 %": {"kind": "brightness", "strength": 2.0, "fraction": 0.1},
    "brightness +5, 10 %": {"kind": "brightness", "strength": 1.25, "fraction": 0.1},
    "noise 1σ, 10 %": {"kind": "noise", "strength": 1.0, "fraction": 0.1},
    "noise 0.5σ, 10 %": {"kind": "noise", "strength": 0.5, "fraction": 0.1},
    "label swap 0↔1, 10 %": {"kind": "label_swap", "strength": 1.0, "fraction": 0.1},
    "brightness +8, 1 device": {"kind": "brightness", "strength": 2.0, "fraction": 0.025},
    "brightness +1, 30 %": {"kind": "brightness", "strength": 0.25, "fraction": 0.3},
    "noise 0.25σ, 30 %": {"kind": "noise", "strength": 0.25, "fraction": 0.3},
    "label skew only (no drift)": {"kind": "brightness", "strength": 0.0, "fraction": 0.3},
}


@dataclass
class Fleet:
    """The devices' data and the deployed model."""

    pop: Population
    runtime: PlanRuntime
    reference: ReferenceProfile
    rows: int
    labelled: float

    def window(self, device: int, server_round: int, version: int, scenarios: list[Scenario],
               seed: int) -> tuple[DriftSummary, float]:
        """One telemetry window of ``device`` and the deployed model's accuracy on its data."""
        x, y = self.pop.client_data(device, server_round)
        for s in scenarios:
            x, y = s.apply(x, y, device, server_round)
        rng = np.random.default_rng([seed, 7000, device, server_round, version])
        pick = rng.integers(0, len(x), size=self.rows)
        xs, ys = x[pick].reshape(self.rows, -1), y[pick]
        probs = self.runtime.predict(xs)
        labels = np.where(rng.random(self.rows) < self.labelled, ys, -1)
        acc = DriftAccumulator(self.reference, model="m", version=version)
        acc.update(xs, probs, labels)
        full = float(np.mean(np.argmax(self.runtime.predict(x.reshape(len(x), -1)), 1) == y))
        return acc.to_summary(), full


def deploy(exp: Experiment, seed: int, rows: int, labelled: float) -> Fleet:
    from simulation.prepare import prepare_run

    out = exp.output.model_copy(update={"dir": f"var/sim/trigger-eval/{seed}"})
    prepared = prepare_run(exp.model_copy(update={"seed": seed, "drift": [], "output": out}))
    rt = PlanRuntime.from_dir(prepared.plan_dir)
    pop = prepared.population
    rt.set_weights(prepared.initial_weights)
    rt.fit(pop.x_train, pop.y_train, epochs=10, lr=0.1, seed=seed)
    if rt.manifest.reference is None:
        raise ExperimentError("the plan has no drift reference profile")
    return Fleet(pop, rt, rt.manifest.reference, rows, labelled)


def scenario(fleet: Fleet, cfg: dict[str, Any], start: int, seed: int, index: int) -> Scenario:
    stats = FeatureStats.of(fleet.pop.x_train, fleet.pop.image_shape)
    dc = DriftConfig(start_round=start, mode="sudden", **cfg)
    return Scenario(dc, fleet.pop.count, seed, 10 + index, stats, fleet.pop.n_classes)


def run_case(fleet: Fleet, cfg: dict[str, Any], *, seed: int, rounds: int, start: int
             ) -> dict[str, Any]:
    """Rounds until the first start, false alarms and the drifted devices' accuracy cost."""
    sc = scenario(fleet, cfg, start, seed, 0)
    tracker = Baselines(fleet.reference, TELEMETRY_BASELINE)
    state = ControllerState(since=T0)
    policy = ControllerPolicy(schedule_every=None, cooldown=timedelta(0))
    fired: list[int] = []
    before: list[float] = []
    after: list[float] = []
    for r in range(1, rounds + 1):
        for d in range(fleet.pop.count):
            summary, acc = fleet.window(d, r, 1, [sc], seed)
            tracker.observe(str(d), summary)
            if sc.affects(d):
                (before if r < start else after).append(acc)
        report = fleet_impact(tracker.readings)
        decision, state = decide(policy, state, T0 + timedelta(hours=r), _reading(report, 1))
        if decision.start:
            fired.append(r)
    first = next((r for r in fired if r >= start), None)
    return {"cost": (float(np.mean(before)) - float(np.mean(after))) if after else 0.0,
            "drifted_devices": len(sc.clients),
            "rounds_to_start": None if first is None else first - start,
            "false_alarms": sum(1 for r in fired if r < start)}


def _reading(report: FleetImpact, version: int) -> FleetDrift:
    return FleetDrift.from_impact("m", report, version=version)


def run_rearm(fleet: Fleet, *, seed: int) -> dict[str, Any]:
    """Fire on v1, promote v2 (trained on the drifted data), re-arm, fire again on v2."""
    first = scenario(fleet, CASES["brightness +8, 10 %"] | {"fraction": 0.3}, REARM[0], seed, 0)
    second = scenario(fleet, CASES["noise 1σ, 10 %"] | {"fraction": 0.2}, REARM[2], seed, 1)
    state = ControllerState(since=T0)
    policy = ControllerPolicy(schedule_every=None, cooldown=timedelta(0))
    tracker = Baselines(fleet.reference, TELEMETRY_BASELINE)
    log: list[dict[str, Any]] = []
    version = 1
    for r in range(1, REARM[2] + 3):
        if r == REARM[1]:  # the run's new version is promoted; devices switch to it
            version = 2
            tracker = Baselines(promote(fleet, r, [first], seed), TELEMETRY_BASELINE)
        for d in range(fleet.pop.count):
            summary, _ = fleet.window(d, r, version, [first, second], seed)
            tracker.observe(str(d), summary)
        report = fleet_impact(tracker.readings)
        decision, state = decide(policy, state, T0 + timedelta(hours=r),
                                 _reading(report, version))
        log.append({"round": r, "version": version, "impact": round(report.impact, 3),
                    "start": decision.start, "armed": state.armed})
    return {"log": log}


def promote(fleet: Fleet, server_round: int, scenarios: list[Scenario], seed: int
            ) -> ReferenceProfile:
    """Version 2: fine-tuned on every device's current data; reference from its summaries."""
    xs, ys, summaries = [], [], []
    for d in range(fleet.pop.count):
        x, y = fleet.pop.client_data(d, server_round)
        for s in scenarios:
            x, y = s.apply(x, y, d, server_round)
        xs.append(x.reshape(len(x), -1))
        ys.append(y)
        acc = DriftAccumulator(fleet.reference, model="m", version=2)
        acc.update(xs[-1])
        summaries.append(acc.to_summary())
    fleet.runtime.fit(np.concatenate(xs), np.concatenate(ys), epochs=5, lr=0.1, seed=seed)
    return refreshed_reference(fleet.reference, DriftSummary.merge_all(summaries))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(EXAMPLE))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--labelled", type=float, default=1.0,
                    help="share of each window's rows whose label the device learns")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--start", type=int, default=5)
    args = ap.parse_args(argv)
    exp = load_experiment(args.config)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    rearm = []
    for seed in args.seeds:
        fleet = deploy(exp, seed, args.rows, args.labelled)
        for name, cfg in CASES.items():
            out[name].append(run_case(fleet, cfg, seed=seed, rounds=args.rounds,
                                      start=args.start))
        rearm.append(run_rearm(deploy(exp, seed, args.rows, args.labelled), seed=seed))
    print(f"labelled share {args.labelled}, {args.rows} rows per window, shift at round "
          f"{args.start}, seeds {args.seeds}\n")
    print("| case | drifted devices | accuracy cost on them | rounds to a start | "
          "false alarms |\n|---|---|---|---|---|")
    for name, res in out.items():
        cost = [x["cost"] for x in res]
        starts = [x["rounds_to_start"] for x in res]
        shown = ", ".join("never" if s is None else str(s) for s in starts)
        print(f"| {name} | {res[0]['drifted_devices']} | {100 * np.mean(cost):.1f} ± "
              f"{100 * np.std(cost):.1f} points | {shown} | "
              f"{sum(x['false_alarms'] for x in res)} |")
    print(f"\nre-arm (v1: 30 % brightness +8 from round {REARM[0]}; v2 promoted in round "
          f"{REARM[1]}; 20 % noise 1σ from round {REARM[2]}):")
    for seed, run in zip(args.seeds, rearm, strict=True):
        starts = [e["round"] for e in run["log"] if e["start"]]
        armed = [e["round"] for e in run["log"] if e["armed"]]
        print(f"  seed {seed}: starts at rounds {starts}; armed after rounds {armed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
