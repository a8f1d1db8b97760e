"""The ServerApp side of a simulated run: the production round loop on a simulated clock.

:class:`SimServer` builds the :class:`aggregation.rounds.RoundRunner` from the experiment
exactly as the production ServerApp builds it from its run settings (strategy, selection policy
and fairness, steering, validation bounds, round size with over-selection, the devices' batch
and weighting rules), wraps Flower's grid in a :class:`~simulation.sim_grid.SimGrid`, runs the
rounds and evaluates each new global model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from aggregation.messages import query_content
from aggregation.rounds import RoundRunner, RoundSettings
from aggregation.selection import make_policy
from aggregation.selection.tracking import TrackerConfig
from aggregation.steering import SteeringConfig
from aggregation.strategies import build_strategy
from aggregation.validation_types import ValidationBounds
from edgefleet.runtime import PlanRuntime
from simulation.config import Experiment
from simulation.prepare import PreparedRun
from simulation.results import Evaluator, round_record, summarize
from simulation.sim_grid import SimGrid


def round_settings(exp: Experiment, model: str) -> RoundSettings:
    c = exp.clients
    target = c.target()
    long = exp.engine.timeout_s
    return RoundSettings(
        model=model, target_clients=target,
        min_reports=min(target, c.min_reports or min(2, target)),
        over_selection=c.over_selection, min_nodes=c.count, wait_for_nodes_s=long,
        query_timeout_s=long, train_timeout_s=long, poll_interval_s=0.0, seed=exp.seed,
        batch_rule=exp.training.batch_rule, weighting=exp.training.weighting,
        query_max_age=exp.selection.query_max_age, query_share=exp.selection.query_share)


def steering(exp: Experiment) -> SteeringConfig:
    s, t = exp.selection, exp.training
    on = s.steering
    return SteeringConfig(base_epochs=t.epochs, max_extra_epochs=s.max_extra_epochs if on else 0,
                          lr=t.lr, drift_boost=s.drift_boost if on else 0.0,
                          max_drift_boost=s.max_drift_boost if on else 0.0,
                          tracking=TrackerConfig(full_effect=s.full_effect,
                                                 threshold=s.drift_threshold),
                          min_score=s.drift_threshold)


def bounds(exp: Experiment) -> ValidationBounds:
    s = exp.selection
    return ValidationBounds(max_update_norm=s.max_update_norm or None,
                            max_norm_ratio=s.max_norm_ratio or None,
                            min_cosine=None if s.min_cosine <= -1.0 else s.min_cosine,
                            direction_mads=None if s.direction_mads < 0 else s.direction_mads,
                            max_weight_ratio=s.max_weight_ratio or None)


class SimServer:
    """Runs the rounds of one experiment (see the module notes)."""

    def __init__(self, exp: Experiment, prepared: PreparedRun, *,
                 on_round: Callable[[dict[str, Any]], None] | None = None,
                 keep_weights: bool = False) -> None:
        self.exp = exp
        self.prepared = prepared
        self.on_round = on_round
        self.keep_weights = keep_weights
        self.rows: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []
        self.round_weights: list[dict[str, np.ndarray]] = []
        self.weights = dict(prepared.initial_weights)
        self.error: BaseException | None = None
        self.tf_loaded = False
        self.epochs: list[int] = []  # local epochs of every accepted update (training cost)

    def summary(self) -> dict[str, Any]:
        return summarize(self.rows, self.prepared.population, self.exp.output.recover_within)

    def simulate(self, backend_config: dict[str, Any]) -> None:
        from flwr.simulation import run_simulation

        from simulation.client_app import make_sim_client_app

        client = make_sim_client_app(str(self.prepared.run_dir.resolve()),
                                     str(self.prepared.plan_dir.resolve()))
        run_simulation(server_app=self._server_app(), client_app=client,
                       num_supernodes=self.exp.clients.count, backend_config=backend_config)

    def _server_app(self) -> Any:
        from flwr.app import Context
        from flwr.serverapp import Grid, ServerApp

        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            try:
                self.run_rounds(grid)
            except BaseException as exc:  # reported by run_experiment, not lost in Flower's log
                self.error = exc

        return app

    def run_rounds(self, grid: Any) -> None:
        exp, pop = self.exp, self.prepared.population
        rt = PlanRuntime.from_dir(self.prepared.plan_dir)
        sim = SimGrid(grid, pop.traces, exp.clients.target(), exp.engine.timeout_s)
        # Flower's simulation starts the ServerApp before it has registered every node (1,000
        # take a while): discovering a part would leave the round loop waiting for the rest
        deadline = time.monotonic() + exp.engine.timeout_s
        while len(list(grid.get_node_ids())) < exp.clients.count and time.monotonic() < deadline:
            time.sleep(0.1)
        sim.discover(query_content(0, rt.manifest.name, 1))
        s = exp.selection
        policy = make_policy(s.policy, fair_max_picks=s.fair_max_picks or None,
                             fair_window=s.fair_window, drift_floor=s.drift_floor,
                             drift_share=None if s.drift_share < 0 else s.drift_share,
                             drift_threshold=s.drift_threshold)
        runner = RoundRunner(sim, rt.manifest, build_strategy(exp.strategy.name,
                                                              exp.strategy.params),
                             policy, settings=round_settings(exp, rt.manifest.name),
                             steering=steering(exp), bounds=bounds(exp), version=1,
                             sleep=lambda _: None)
        evaluator = Evaluator(rt, pop)
        participants: set[int] = set()
        bar = _progress(exp)
        weights = self.weights
        for r in range(1, exp.rounds + 1):
            sim.start_round()
            t = time.perf_counter()
            outcome = runner.run_round(r, weights)
            server_s = time.perf_counter() - t
            weights = outcome.weights
            self.epochs.extend(runner.steering.local_epochs(v)
                               for v in outcome.drift_scores.values())
            if outcome.report.status != "ok" and sim.traffic.sim_end == sim.traffic.sim_start:
                sim.clock += exp.traces.round_deadline_s  # nobody could train: wait a deadline
            sim.traffic.sim_end = sim.clock
            evaluation = evaluator.evaluate(r, weights)
            row = round_record(outcome.report, sim.traffic, evaluation,
                               node_device=sim.node_device, pop=pop,
                               drift_scores=outcome.drift_scores, participants=participants)
            self.tf_loaded |= sim.traffic.tf_loaded
            self.rows.append(row)
            self.timings.append({"round": r, "round_wall_s": server_s,
                                 **{f"{k}_s": v for k, v in outcome.report.timings.items()}})
            if self.keep_weights:
                self.round_weights.append({k: np.array(v) for k, v in weights.items()})
            if bar is not None:
                bar.set_postfix(acc=f"{row['accuracy']:.3f}", ok=row["accepted"])
                bar.update(1)
            if self.on_round is not None:
                self.on_round(row)
        self.weights = weights
        if bar is not None:
            bar.close()


def _progress(exp: Experiment) -> Any:
    if not exp.output.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=exp.rounds, desc=exp.name, unit="round", leave=True)
