"""Publishing each successful round to the registry, with its lineage, and gating ``canary``.

:class:`Publisher` is the round loop's ``on_round`` hook. For every successful round it publishes
the new global weights as a *weights-only* version on the parent's plan, with

* lineage: parent version, federated run, round, number of clients aggregated, strategy, and the
  merged drift summary of the clients aggregated;
* metrics: the round's train metrics, the server holdout and client evaluation
  (``train.*``, ``holdout.*``, ``clients.*``) and its counts (``round.accepted``...);
* hyperparameters: strategy and selection settings and the round report (who was refused, why);

then asks :func:`aggregation.evaluation.canary_gate` whether the new version may become
``canary``: its holdout metric must not be worse than production's (on the same holdout set) by
more than ``max_drop``. The ``production`` alias is never moved here. With
``GateSettings.action == "rollout"`` a passing gate starts a guarded rollout of the version
instead (:mod:`edgefleet.rollouts`; the server's controller promotes it on the fleet's evidence
or rolls it back); while the model has an active rollout the version is only published.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aggregation.errors import RegistryRejected
from aggregation.evaluation import GateDecision, canary_gate
from aggregation.registry_client import RegistryClient
from aggregation.rounds import RoundOutcome
from edgefleet.bounds import finite_json
from edgefleet.plan import PlanManifest
from edgefleet.run_settings import DEFAULTS
from edgefleet.wire import METRIC_NAME_PATTERN, VersionLineage, VersionPublish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateSettings:
    """How the canary gate decides.

    Parameters
    ----------
    metric : str (default: "accuracy")
        Holdout metric compared (``holdout.<metric>`` of the round).
    max_drop : float (default: 0.01)
        Tolerated degradation against production.
    higher_is_better : bool (default: True)
        ``False`` for a loss.
    alias : str (default: "canary")
        The alias moved when the gate passes.
    rollout_percent : float or None (default: None)
        Share of the fleet following the canary; ``None`` keeps the server's default.
    action : "alias" or "rollout" (default: "alias")
        Move ``alias``, or start a rollout of the version with ``rollout`` (the
        :class:`edgefleet.rollouts.RolloutCreate` fields besides model and candidate).
    """

    metric: str = DEFAULTS.gate_metric
    max_drop: float = DEFAULTS.gate_max_drop
    higher_is_better: bool = True
    alias: str = "canary"
    rollout_percent: float | None = None
    action: str = DEFAULTS.gate_action
    rollout: Mapping[str, Any] | None = None


@dataclass
class Publisher:
    """Publish successful rounds and move the canary alias through the gate.

    Parameters
    ----------
    client : RegistryClient
        The registry.
    model : str
        The registry's model name (may differ from ``manifest.name``).
    manifest : PlanManifest
        The plan the run trains (its sha256 is recorded in the weights file).
    run_name : str
        The federated run's stable name (lineage ``federated_run``; resuming looks it up).
    parent_version : int
        The version the next round's weights derive from (updated after every publish).
    strategy : str
        Strategy name for the lineage.
    production_metrics : Mapping[str, float] or None (default: None)
        Production's holdout metrics, for the gate (``None``: no production to compare with).
    gate : GateSettings (default: GateSettings())
        Gate parameters.
    hyperparameters : dict (default: {})
        Run settings recorded with every version.
    """

    client: RegistryClient
    model: str
    manifest: PlanManifest
    run_name: str
    parent_version: int
    strategy: str
    production_metrics: Mapping[str, float] | None = None
    gate: GateSettings = field(default_factory=GateSettings)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    decisions: dict[int, GateDecision] = field(default_factory=dict)

    def __call__(self, outcome: RoundOutcome) -> int:
        meta = self.metadata(outcome)
        info = self.client.publish_weights(self.model, outcome.weights, meta,
                                           plan_sha256=self.manifest.plan_sha256)
        self.parent_version = info.version
        decision = self.gate_decision(outcome)
        self.decisions[info.version] = decision
        if decision.promote and self.gate.action == "rollout":
            self._start_rollout(info.version, decision)
        elif decision.promote:
            self.client.move_alias(self.model, self.gate.alias, info.version,
                                   reason=f"federated gate: {decision.reason}"[:1000],
                                   rollout_percent=self.gate.rollout_percent)
        log.info("published %s v%d (round %d); %s %s: %s", self.model, info.version,
                 outcome.report.server_round,
                 "rollout" if self.gate.action == "rollout" else self.gate.alias,
                 "started" if decision.promote else "kept", decision.reason)
        return info.version

    def _start_rollout(self, version: int, decision: GateDecision) -> None:
        try:
            started = self.client.start_rollout(self.model, version, self.gate.rollout,
                                                reason=f"federated gate: {decision.reason}"[:1000])
        except RegistryRejected as exc:
            if exc.status_code != 409:
                raise
            log.info("v%d published; no rollout started: %s", version, exc)
            return
        log.info("rollout %d of %s v%d started (%s)", started.id, self.model, version,
                 started.strategy)

    def metadata(self, outcome: RoundOutcome) -> VersionPublish:
        """The version's metadata: lineage, metrics, hyperparameters."""
        report = outcome.report
        metrics = {k: float(v) for k, v in report.metrics.items()}
        metrics.update({
            "round.accepted": float(len(report.accepted)),
            "round.refused": float(len(report.refused)),
            "round.stragglers": float(len(report.stragglers)),
            "round.selected": float(len(report.selected)),
        })
        metrics = {k: v for k, v in metrics.items()
                   if math.isfinite(v) and re.match(METRIC_NAME_PATTERN, k)}
        lineage = VersionLineage(
            parent_version=self.parent_version,
            federated_run=self.run_name,
            federated_round=report.server_round,
            num_clients=len(report.accepted),
            strategy=self.strategy,
            drift_summary=None if outcome.drift is None else outcome.drift.model_dump(mode="json"),
        )
        hyper = {
            **self.hyperparameters,
            "round": report.to_dict(),
            "drift_scores": {str(k): v for k, v in outcome.drift_scores.items()},
        }
        return VersionPublish(
            description=f"federated run {self.run_name}, round {report.server_round} "
                        f"({len(report.accepted)} clients, {self.strategy})",
            metrics=metrics, hyperparameters=finite_json(hyper), lineage=lineage,
            plan_from_version=self.parent_version,
        )

    def gate_decision(self, outcome: RoundOutcome) -> GateDecision:
        """The canary gate on the round's holdout metrics."""
        prefix = "holdout."
        candidate = {k[len(prefix):]: v for k, v in outcome.report.metrics.items()
                     if k.startswith(prefix)}
        if not candidate:
            return GateDecision(False, "no holdout evaluation: canary not moved",
                                self.gate.metric, None, None)
        return canary_gate(candidate, self.production_metrics, metric=self.gate.metric,
                           max_drop=self.gate.max_drop,
                           higher_is_better=self.gate.higher_is_better)
