"""The settings of one federated run, read from Flower's run config.

Flower passes ``[tool.flwr.app.config]`` of the app's ``pyproject.toml`` (overridden by
``flwr run --run-config "k=v ..."``) to the ServerApp as ``context.run_config``, nested tables
flattened with dots. Every field of :class:`RunSettings` is a key with ``-`` for ``_``
(``num-rounds``, ``target-clients``...); ``strategy-params.<name>`` keys go to the strategy
(``strategy-params.proximal-mu = 0.1`` → ``proximal_mu=0.1``). Keys the ServerApp does not know
are left alone: the same run config also reaches the ClientApps.

The admin key may come from the ``EDGEFLEET_ADMIN_KEY`` environment variable instead of the run
config (which is stored with the run on the SuperLink).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aggregation.errors import SettingsError

STRATEGY_PARAMS = "strategy-params."
ADMIN_KEY_ENV = "EDGEFLEET_ADMIN_KEY"


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs; defaults in brackets.

    Parameters
    ----------
    server_url : str
        The EdgeFleet server (registry REST API).
    model : str
        The model trained.
    admin_key : str [""]
        Registry admin key (or ``EDGEFLEET_ADMIN_KEY``).
    run_name : str [""]
        Stable name of the run, recorded in lineage; a run restarted with the same name resumes
        from its last published version. Empty: ``<model>-fl-<flower run id>`` (no resume).
    base_version : int [0]
        The version to start from; 0 means the ``production`` alias.
    num_rounds : int [3]
        Total rounds of the run (a resumed run does the remaining ones).
    strategy : str ["fedavg"]
        fedavg, fedprox, fedadam, fedyogi, fedtrimmedavg or krum; ``strategy_params`` its args.
    selection : str ["uniform"]
        uniform or drift; ``fair_max_picks`` > 0 (in ``fair_window`` rounds) and
        ``fair_cooldown`` add the fairness bound; ``drift_floor`` tunes drift selection.
    target_clients, min_reports, over_selection, min_nodes : [3, 2, 1.3, 0 = min_reports]
        Round size (see :class:`aggregation.rounds.RoundSettings`).
    wait_for_nodes_s, query_timeout_s, train_timeout_s, eval_timeout_s : [60, 15, 120, 30]
        Deadlines in seconds; ``eval_clients`` [0] nodes evaluate each new model.
    base_epochs, max_extra_epochs, lr, drift_boost, max_drift_boost : [1, 2, 0.05, 1.0, 0.5]
        Drift steering (see :class:`aggregation.steering.SteeringConfig`).
    max_update_norm, max_norm_ratio, max_num_examples : [0 = off, 10.0, 1_000_000]
        Validation bounds (``max_norm_ratio`` 0 = off).
    holdout_path : str [""]
        ``.npz`` (``x``, ``y``) the server evaluates every new model on; empty = no holdout (and
        then the canary alias never moves).
    gate_metric, gate_max_drop, canary_rollout_percent : ["accuracy", 0.01, -1 = server default]
        The canary gate.
    seed : int [0]
        Selection randomness.
    """

    server_url: str
    model: str
    admin_key: str = ""
    run_name: str = ""
    base_version: int = 0
    num_rounds: int = 3
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    selection: str = "uniform"
    fair_max_picks: int = 0
    fair_window: int = 5
    fair_cooldown: int = 0
    drift_floor: float = 0.1
    target_clients: int = 3
    min_reports: int = 2
    over_selection: float = 1.3
    min_nodes: int = 0
    wait_for_nodes_s: float = 60.0
    query_timeout_s: float = 15.0
    train_timeout_s: float = 120.0
    eval_clients: int = 0
    eval_timeout_s: float = 30.0
    poll_interval_s: float = 0.5
    base_epochs: int = 1
    max_extra_epochs: int = 2
    lr: float = 0.05
    drift_boost: float = 1.0
    max_drift_boost: float = 0.5
    max_update_norm: float = 0.0
    max_norm_ratio: float = 10.0
    max_num_examples: int = 1_000_000
    holdout_path: str = ""
    gate_metric: str = "accuracy"
    gate_max_drop: float = 0.01
    canary_rollout_percent: float = -1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.server_url or not self.model:
            raise SettingsError("server-url and model are required")
        if self.num_rounds < 1:
            raise SettingsError("num-rounds must be >= 1")

    @classmethod
    def from_run_config(
        cls, config: Mapping[str, Any], *, env: Mapping[str, str] | None = None
    ) -> RunSettings:
        """Read the settings from a Flower run config (see the module notes)."""
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for key, raw in config.items():
            if key.startswith(STRATEGY_PARAMS):
                params[key[len(STRATEGY_PARAMS):].replace("-", "_")] = raw
                continue
            name = key.replace("-", "_")
            if name in fields and name != "strategy_params":
                values[name] = _coerce(key, raw, fields[name].default)
        if not values.get("admin_key") and env.get(ADMIN_KEY_ENV):
            values["admin_key"] = env[ADMIN_KEY_ENV]
        values["strategy_params"] = params
        try:
            return cls(**values)
        except TypeError as exc:  # a required key is missing
            raise SettingsError(f"run config lacks a required key: {exc}") from exc

    def resolved_run_name(self, flower_run_id: int) -> str:
        return self.run_name or f"{self.model}-fl-{flower_run_id}"


def _coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert a run-config value to the type of the field's default."""
    if default is dataclasses.MISSING or isinstance(default, str):
        if not isinstance(raw, str):
            raise SettingsError(f"run config {key!r} must be a string, got {raw!r}")
        return raw
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise SettingsError(f"run config {key!r} must be a boolean, got {raw!r}")
        return raw
    if isinstance(default, int):
        if isinstance(raw, bool) or not (isinstance(raw, int) or
                                         (isinstance(raw, float) and raw.is_integer())):
            raise SettingsError(f"run config {key!r} must be an integer, got {raw!r}")
        return int(raw)
    if isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SettingsError(f"run config {key!r} must be a number, got {raw!r}")
        return float(raw)
    raise SettingsError(f"run config {key!r} cannot be set")
