"""The Flower ServerApp: a thin wrapper around :class:`aggregation.rounds.RoundRunner`.

``flwr run`` loads ``aggregation.server_app:app``; its ``main(grid, context)`` reads
:class:`~aggregation.settings.RunSettings` from ``context.run_config`` and calls
:func:`run_federation`, which

1. fetches the base version (``production`` unless ``base-version`` is set): manifest, plan and
   weights, from the registry over HTTP, and verifies them against the version's signature
   (:mod:`aggregation.provenance`; an unsigned or altered version does not start a run);
2. **resumes**: when the registry already holds versions of this ``run-name``, continues from
   the newest one (its weights, round + 1) instead of the base;
3. evaluates production on the holdout set once (the canary gate's reference);
4. runs the remaining rounds (query → select → train → validate → aggregate → evaluate →
   publish → gate), each successful round published as a new version, between a ``run.start``
   and a ``run.end`` record of the server's audit trail (``POST /api/v1/audit/runs``).

What a resumed run does not recover: the adaptive strategies' moments (FedAdam/FedYogi restart
them) and the fairness bound's memory of past picks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregation.errors import RegistryClientError, SettingsError
from aggregation.evaluation import Holdout, HoldoutEvaluator
from aggregation.provenance import signed_version
from aggregation.publishing import GateSettings, Publisher
from aggregation.registry_client import RegistryClient
from aggregation.rounds import GridLike, RoundRunner, RoundSettings, RunResult
from aggregation.selection import make_policy
from aggregation.selection.quarantine import Quarantine
from aggregation.settings import RunSettings, knobs_for
from aggregation.steering import SteeringConfig
from aggregation.strategies import build_strategy, strategy_name
from aggregation.validation_types import ValidationBounds
from edgefleet.audit import RunEvent
from edgefleet.errors import PlanMismatchError

log = logging.getLogger(__name__)


def run_federation(
    grid: GridLike,
    settings: RunSettings,
    *,
    flower_run_id: int = 0,
    client: RegistryClient | None = None,
) -> RunResult:
    """Run (or resume) a federated run on ``grid``; see the module notes.

    Raises
    ------
    aggregation.errors.SettingsError
        Unknown strategy or selection policy, inconsistent round sizes.
    aggregation.errors.RegistryClientError
        The registry is unreachable, refuses the admin key, or lacks the base version.
    """
    owns_client = client is None
    client = client or RegistryClient(settings.server_url, settings.admin_key or None)
    try:
        return _run(grid, settings, client, settings.resolved_run_name(flower_run_id))
    finally:
        if owns_client:
            client.close()


def _run(grid: GridLike, s: RunSettings, client: RegistryClient, run_name: str) -> RunResult:
    production = client.production_version(s.model)
    base = s.base_version or production
    if base is None:
        raise SettingsError(f"{s.model} has no production version and no base-version is set")
    start = signed_version(client, s.model, base, signing_public_key=s.signing_public_key)
    manifest, plan, weights = start.manifest, start.plan, start.weights
    parent, first_round = base, 1
    latest = client.latest_run_version(s.model, run_name)
    if latest is not None:
        parent = latest.version
        first_round = (latest.lineage.federated_round or 0) + 1
        if latest.plan.sha256 != manifest.plan_sha256:
            raise PlanMismatchError(f"run {run_name} trained another plan than v{base}")
        weights = signed_version(client, s.model, parent,
                                 signing_public_key=s.signing_public_key).weights
        log.info("resuming run %s from v%d (round %d done)", run_name, parent, first_round - 1)
    remaining = s.num_rounds - first_round + 1
    if remaining <= 0:
        log.info("run %s already finished its %d rounds", run_name, s.num_rounds)
        return RunResult(weights, [])

    evaluator = None
    production_metrics = None
    if s.holdout_path:
        evaluator = HoldoutEvaluator(plan, manifest, Holdout.load(s.holdout_path))
        if production is not None:
            production_metrics = evaluator.evaluate(client.weights(s.model, production, manifest))

    strategy = build_strategy(s.strategy, s.strategy_params)
    policy = make_policy(s.selection, fair_max_picks=s.fair_max_picks or None,
                         fair_window=s.fair_window, fair_cooldown=s.fair_cooldown,
                         drift_floor=s.drift_floor)
    if s.quarantine_after > 0:
        policy = Quarantine(policy, after=s.quarantine_after, path=s.quarantine_path or None)
    publisher = Publisher(
        client, s.model, manifest, run_name, parent, strategy_name(strategy),
        production_metrics=production_metrics,
        gate=GateSettings(metric=s.gate_metric, max_drop=s.gate_max_drop,
                          rollout_percent=(None if s.canary_rollout_percent < 0
                                           else s.canary_rollout_percent),
                          action=s.gate_action,
                          rollout=json.loads(s.gate_rollout) if s.gate_rollout else None),
        hyperparameters={"strategy": strategy_name(strategy), "strategy_params": s.strategy_params,
                         "selection": getattr(policy, "name", s.selection),
                         "target_clients": s.target_clients, "min_reports": s.min_reports,
                         "over_selection": s.over_selection, "base_version": base},
    )
    runner = RoundRunner(
        grid, manifest, strategy, policy,
        settings=RoundSettings(**knobs_for(RoundSettings, s)),
        steering=SteeringConfig(**knobs_for(SteeringConfig, s)),
        bounds=ValidationBounds(max_update_norm=s.max_update_norm or None,
                                max_norm_ratio=s.max_norm_ratio or None,
                                max_num_examples=s.max_num_examples,
                                min_cosine=s.min_cosine,
                                direction_mads=None if s.direction_mads < 0 else s.direction_mads,
                                max_weight_ratio=s.max_weight_ratio or None),
        evaluate_fn=evaluator, on_round=publisher, version=parent,
    )
    log.info("run %s: %s rounds %d..%d from v%d (%s, %s)", run_name, s.model, first_round,
             s.num_rounds, parent, strategy_name(strategy), getattr(policy, "name", ""))
    begun = RunEvent(model=s.model, run=run_name, event="start", rounds=remaining, detail={
        "strategy": strategy_name(strategy), "selection": getattr(policy, "name", s.selection),
        "base_version": base, "parent_version": parent, "first_round": first_round,
        "num_rounds": s.num_rounds, "target_clients": s.target_clients,
        "fleet_drift": _fleet_drift(client, s.model)})
    return _audited(client, begun, publisher,
                    lambda: runner.run(weights, num_rounds=remaining, first_round=first_round))


def _audited(client: RegistryClient, begun: RunEvent, publisher: Publisher,
             run: Callable[[], RunResult]) -> RunResult:
    """``run()`` between the run's ``run.start`` and ``run.end`` records on the server."""
    client.record_run(begun)
    try:
        result = run()
    except BaseException as exc:
        _record_end(client, begun, "failed", len(publisher.decisions), publisher,
                    reason=" ".join(f"{type(exc).__name__}: {exc}".split())[:1000])
        raise
    _record_end(client, begun, "completed", len(result.outcomes), publisher)
    return result


def _fleet_drift(client: RegistryClient, model: str) -> dict[str, object] | None:
    """The fleet drift the run starts on (what triggered a drift-started run), if reported."""
    try:
        drift = client.fleet_drift(model)
    except RegistryClientError as exc:
        log.warning("no fleet drift for the run's audit record: %s", exc)
        return None
    if drift is None:
        return None
    return {"version": drift.version, "score": drift.score, "signals": drift.signals,
            "triggered": drift.triggered}


def _record_end(client: RegistryClient, start: RunEvent, outcome: str, rounds: int,
                publisher: Publisher, reason: str | None = None) -> None:
    """Report the run's end (a failed run's end is reported when the registry answers)."""
    event = start.model_copy(update={
        "event": "end", "outcome": outcome, "rounds": rounds, "reason": reason,
        "detail": {"published": sorted(publisher.decisions),
                   "promoted": sorted(v for v, d in publisher.decisions.items() if d.promote)}})
    try:
        client.record_run(event)
    except RegistryClientError as exc:
        if outcome == "completed":
            raise
        log.warning("could not record the end of failed run %s: %s", start.run, exc)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: settings from ``context.run_config``, then :func:`run_federation`."""
    _log_through_flower()
    settings = RunSettings.from_run_config(context.run_config)
    run_federation(grid, settings, flower_run_id=context.run_id)


def _log_through_flower() -> None:
    """Send this package's log records to Flower's handlers, so ``flwr log`` shows the rounds."""
    ours, flower = logging.getLogger("aggregation"), logging.getLogger("flwr")
    if ours.handlers or not flower.handlers:
        return
    for handler in flower.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
