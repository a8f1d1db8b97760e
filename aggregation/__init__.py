"""Federated aggregation: the Flower ServerApp, strategies, selection policies, update validation
and the drift-triggered controller. Talks to the server over HTTP through a registry client.

May import: the shared ``edgefleet`` core, flwr, numpy, httpx, prometheus_client. Never the
database. The Flower message keys (:mod:`edgefleet.flower_keys`) and the run settings
(:mod:`edgefleet.run_settings`) are the core's: the ClientApp and the fleet use them too.

Modules::

    errors          the exception tree (FederationError)
    validation      UpdateValidator: the checks of a round's train replies
    validation_types ValidationBounds, Verdict, Refusal, RefusalReason
    update_arrays   a reply's arrays decoded against the weight spec; stacking in blocks
    report          RoundReport: who was asked, who answered, what was refused and why
    selection/      Candidate, uniform / drift-prioritised selection, the fairness bound,
                    per-node drift as change against the node's own baseline (tracking,
                    its readings in arrays by node slot: reading_table)
    steering        drift -> local epochs and aggregation weight ("agg-weight")
    strategies      Flower strategies by name; their aggregate_train on validated replies
    robust_bulyan   Flower's Bulyan rule with each reply decoded once (the same aggregate)
    messages        query/train/evaluate message shapes (as edge_client.flower_client speaks)
    rounds          RoundRunner: the round loop on any Flower Grid
    round_types     RoundSettings, RoundOutcome, RunResult, GridLike (re-exported by rounds)
    exchange        the round loop's messaging: push, pull until enough replies, query
    answer_book     each node's last answer between rounds, in arrays by node slot
    roster          the connected nodes as one round sees them (arrays, not objects)
    evaluation      server holdout evaluation (PlanRuntime) and the canary gate
    publishing      Publisher: new versions with lineage, canary gate
    registry_client RegistryClient: the server's REST API (httpx)
    controller      when to start a run (fleet drift, schedule, cooldown); FlwrRunLauncher
    metrics         Prometheus metrics of rounds, replies and controller decisions
                    (multiprocess-aware)
    settings        RunSettings from Flower's run config (defined in edgefleet.run_settings)
    server_app      the ServerApp (``aggregation.server_app:app``) and run_federation

The names below are importable from ``aggregation`` directly; they load on first use, so
``import aggregation`` (and ``edgefleet fl``'s CLI) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FederationError": "aggregation.errors",
    "RoundFailed": "aggregation.errors",
    "SettingsError": "aggregation.errors",
    "RegistryClientError": "aggregation.errors",
    "UpdateValidator": "aggregation.validation",
    "ValidationBounds": "aggregation.validation_types",
    "RefusalReason": "aggregation.validation_types",
    "RoundReport": "aggregation.report",
    "RoundRunner": "aggregation.rounds",
    "RoundSettings": "aggregation.rounds",
    "SteeringConfig": "aggregation.steering",
    "build_strategy": "aggregation.strategies",
    "make_policy": "aggregation.selection",
    "RegistryClient": "aggregation.registry_client",
    "Publisher": "aggregation.publishing",
    "DriftController": "aggregation.controller",
    "RunSettings": "aggregation.settings",
    "run_federation": "aggregation.server_app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aggregation' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
