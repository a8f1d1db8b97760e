"""The settings of one federated run: every knob once, with its one default.

:class:`RunSettings` is the single definition. Everything else derives from it:

* the ServerApp reads it from Flower's run config (:meth:`RunSettings.from_run_config`;
  ``aggregation.settings`` turns its errors into the aggregation's ``SettingsError``), and builds
  its round, steering, validation and gate settings from it, whose own defaults are
  :data:`DEFAULTS`;
* the Flower app's ``[tool.flwr.app.config]`` table (``aggregation/flower_app/pyproject.toml``)
  is :func:`app_config_table` (``edgefleet fl run-config`` prints it; a test keeps the file equal
  to it);
* whoever starts a run (the fleet, the controller) writes :meth:`RunSettings.run_config`;
* the ClientApp's fallback learning rate is ``DEFAULTS.lr``.

Run-config keys are the field names with ``-`` for ``_`` (``num-rounds``, ``target-clients``...);
``strategy-params.<name>`` keys go to the strategy (``strategy-params.proximal-mu = 0.1`` →
``strategy_params={"proximal_mu": 0.1}``). Keys that are not fields are left alone: the same run
config reaches the ClientApps. Values are typed as TOML gives them: a string field takes only a
string, an integer field an integer (or an integral float), a number field an integer or a
float; a boolean is never a number. The admin key may come from ``EDGEFLEET_ADMIN_KEY`` instead
of the run config (which the SuperLink stores).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    model_validator,
)

from edgefleet.errors import EdgeFleetError

__all__ = [
    "ADMIN_KEY_ENV",
    "APP_EXAMPLES",
    "DEFAULTS",
    "STRATEGY_PARAMS",
    "RunConfigError",
    "RunKnobs",
    "RunSettings",
    "app_config_table",
    "config_key",
]

STRATEGY_PARAMS: Final = "strategy-params."
ADMIN_KEY_ENV: Final = "EDGEFLEET_ADMIN_KEY"
RunConfigValue = str | int | float | bool


class RunConfigError(EdgeFleetError, ValueError):
    """A run config that cannot be used (a required key missing, a value of the wrong type or
    out of its range)."""


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]


class RunKnobs(BaseModel):
    """Every knob of a run with its default (the defaults are :data:`DEFAULTS`).

    Parameters
    ----------
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
    selection : str ["drift"]
        drift or uniform; ``fair_max_picks`` > 0 (in ``fair_window`` rounds) and
        ``fair_cooldown`` add the fairness bound; ``drift_floor`` tunes drift selection. Drift
        selection is the default because the harness measured it (with ``max_extra_epochs`` 6)
        against uniform: README, "Drift steering: change against each client's own baseline,
        measured".
    target_clients, min_reports, over_selection : [3, 2, 1.3]
        Train replies that close a round; valid updates below which it fails; select
        ``ceil(over_selection * target_clients)`` nodes.
    min_nodes : int [0]
        Connected nodes to wait for (at most ``wait_for_nodes_s``) before querying; 0 means
        ``min_reports``.
    wait_for_nodes_s, query_timeout_s, train_timeout_s, eval_timeout_s : [60, 15, 120, 30]
        Deadlines in seconds; ``eval_clients`` [0] nodes evaluate each new model.
    poll_interval_s : float [0.5]
        Pause between two pulls of replies.
    base_epochs, max_extra_epochs, lr, drift_boost, max_drift_boost : [1, 6, 0.05, 1.0, 0.5]
        Drift steering: local epochs ``base_epochs + round(score * max_extra_epochs)`` for a
        node scoring at least the drift threshold, learning rate, aggregation weight
        ``n * (1 + min(drift_boost * score, max_drift_boost))``; 6 extra epochs is the measured
        value (2 and 4 helped the drifted clients less, same README section).
    max_update_norm, max_norm_ratio, max_num_examples : [0 = off, 10.0, 1_000_000]
        Validation bounds (``max_norm_ratio`` 0 = off).
    min_cosine, max_weight_ratio : [0.1, 2.0]
        Round-level defences (``aggregation.validation``): refuse an update whose cosine with
        the round's median update is below ``min_cosine`` (-1 = off); weigh no update more than
        ``max_weight_ratio`` times the round's median example count (0 = off).
    direction_mads : float [3.0]
        The direction bound is lowered to the round's median cosine minus this many robust
        deviations (1.4826 x MAD) when that is below ``min_cosine`` (-1 = off: ``min_cosine``
        alone).
    quarantine_after, quarantine_path : [3, ""]
        A node refused in ``quarantine_after`` of its last 5 updates is left out of selection
        until an operator releases it (0 = off; ``aggregation.selection.quarantine``); the
        state is kept in the JSON file ``quarantine_path`` (empty: memory only).
    signing_public_key : str [""]
        The registry's version-signing public key (base64, ``edgefleet server keys list``) the
        start model's signature must verify against; empty: the first key the registry names.
    holdout_path : str [""]
        ``.npz`` (``x``, ``y``) the server evaluates every new model on; empty = no holdout (and
        then the canary alias never moves).
    gate_metric, gate_max_drop, canary_rollout_percent : ["accuracy", 0.01, -1 = server default]
        The canary gate.
    gate_action, gate_rollout : ["alias", ""]
        What a passing gate does: ``alias`` moves the canary alias; ``rollout`` starts a guarded
        rollout of the new version (``POST /api/v1/rollouts``, :mod:`edgefleet.rollouts`) whose
        fields other than ``model`` and ``candidate`` come from ``gate_rollout``, a JSON object
        of :class:`edgefleet.rollouts.RolloutCreate` (empty: the server's defaults, a canary).
        While the model already has an active rollout the new version is only published.
    seed : int [0]
        Selection randomness (round ``r`` draws ``seed + r``).
    batch_rule, weighting : ["wrap", "local-size"]
        The devices' training semantics, sent in every train config: what ``fit`` does with an
        epoch's last partial batch (``wrap``, ``drop`` or ``short``, see
        :meth:`edgefleet.runtime.PlanRuntime.fit`) and what a device reports as its
        ``num-examples`` (``local-size``: its local examples; ``examples-trained``: the
        examples one epoch actually trained, as TensorFlow Federated weights clients).
    query_max_age : int [5]
        0 queries every node every round; ``K > 0`` queries a node only when its last answer
        (its query reply, or the eligibility and drift its train reply carried) is more than
        ``K`` rounds old (``aggregation.answer_book``); a node without a fresh answer is a
        candidate presumed eligible (no round queries before training).
    query_share : float [0.1]
        With ``query_max_age > 0``: the stale nodes the selection passed over that a round
        queries, at most ``ceil(query_share * selected)``, oldest answer first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    admin_key: StrictStr = ""
    run_name: StrictStr = ""
    base_version: Int = Field(default=0, ge=0)
    num_rounds: Int = Field(default=3, ge=1)
    strategy: StrictStr = "fedavg"
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    selection: StrictStr = "drift"
    fair_max_picks: Int = Field(default=0, ge=0)
    fair_window: Int = Field(default=5, ge=1)
    fair_cooldown: Int = Field(default=0, ge=0)
    drift_floor: Float = Field(default=0.1, gt=0)
    target_clients: Int = Field(default=3, ge=1)
    min_reports: Int = Field(default=2, ge=1)
    over_selection: Float = Field(default=1.3, ge=1)
    min_nodes: Int = Field(default=0, ge=0)
    wait_for_nodes_s: Float = Field(default=60.0, ge=0)
    query_timeout_s: Float = Field(default=15.0, gt=0)
    train_timeout_s: Float = Field(default=120.0, gt=0)
    eval_clients: Int = Field(default=0, ge=0)
    eval_timeout_s: Float = Field(default=30.0, ge=0)
    poll_interval_s: Float = Field(default=0.5, ge=0)
    base_epochs: Int = Field(default=1, ge=1)
    max_extra_epochs: Int = Field(default=6, ge=0)
    lr: Float = Field(default=0.05, gt=0, allow_inf_nan=False)
    drift_boost: Float = Field(default=1.0, ge=0)
    max_drift_boost: Float = Field(default=0.5, ge=0)
    max_update_norm: Float = Field(default=0.0, ge=0)
    max_norm_ratio: Float = Field(default=10.0, ge=0)
    max_num_examples: Int = Field(default=1_000_000, ge=1)
    min_cosine: Float = Field(default=0.1, ge=-1, lt=1)
    direction_mads: Float = Field(default=3.0, ge=-1)
    max_weight_ratio: Float = Field(default=2.0, ge=0)
    quarantine_after: Int = Field(default=3, ge=0, le=5)
    quarantine_path: StrictStr = ""
    signing_public_key: StrictStr = ""
    holdout_path: StrictStr = ""
    gate_metric: StrictStr = "accuracy"
    gate_max_drop: Float = Field(default=0.01, ge=0)
    canary_rollout_percent: Float = Field(default=-1.0, ge=-1, le=100)
    gate_action: Literal["alias", "rollout"] = "alias"
    gate_rollout: StrictStr = ""
    seed: Int = 0
    batch_rule: Literal["wrap", "drop", "short"] = "wrap"
    weighting: Literal["local-size", "examples-trained"] = "local-size"
    query_max_age: Int = Field(default=5, ge=0)
    query_share: Float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _round_sizes(self) -> Self:
        if self.min_reports > self.target_clients:
            raise ValueError("min_reports must be <= target_clients")
        return self

    @model_validator(mode="after")
    def _gate_rollout(self) -> Self:
        if self.gate_rollout:
            import json

            try:
                spec = json.loads(self.gate_rollout)
            except ValueError:
                raise ValueError("gate_rollout must be a JSON object") from None
            if not isinstance(spec, dict) or {"model", "candidate"} & set(spec):
                raise ValueError("gate_rollout must be a JSON object without model/candidate")
        return self


#: The one default of every knob.
DEFAULTS: Final = RunKnobs()

#: Values the Flower app's config table gives the required keys (a local server, the demo model).
APP_EXAMPLES: Final[Mapping[str, str]] = {"server_url": "http://127.0.0.1:8000",
                                          "model": "digits"}


class RunSettings(RunKnobs):
    """Everything a run needs: the knobs of :class:`RunKnobs` and, required, the server and the
    model.

    Parameters
    ----------
    server_url : str
        The EdgeFleet server (registry REST API).
    model : str
        The registry model trained.
    """

    server_url: StrictStr = Field(min_length=1)
    model: StrictStr = Field(min_length=1)

    @classmethod
    def from_run_config(
        cls, config: Mapping[str, Any], *, env: Mapping[str, str] | None = None
    ) -> Self:
        """Read the settings from a Flower run config (see the module notes).

        Raises
        ------
        RunConfigError
            A required key is missing, or a value has the wrong type or is out of its range.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for key, raw in config.items():
            if key.startswith(STRATEGY_PARAMS):
                params[key[len(STRATEGY_PARAMS):].replace("-", "_")] = raw
                continue
            name = key.replace("-", "_")
            if name in cls.model_fields and name != "strategy_params":
                values[name] = raw
        if not values.get("admin_key") and env.get(ADMIN_KEY_ENV):
            values["admin_key"] = env[ADMIN_KEY_ENV]
        values["strategy_params"] = params
        try:
            return cls(**values)
        except ValidationError as exc:
            raise RunConfigError(_describe(exc)) from None

    def run_config(self, *, changed_only: bool = True) -> dict[str, RunConfigValue]:
        """These settings as run-config keys (``flwr run --run-config``): the required ones and
        the knobs that differ from :data:`DEFAULTS` (all of them with ``changed_only=False``);
        ``strategy_params`` as ``strategy-params.<name>`` keys."""
        out: dict[str, RunConfigValue] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "strategy_params":
                out.update({f"{STRATEGY_PARAMS}{k.replace('_', '-')}": v
                            for k, v in value.items()})
            elif not changed_only or name not in RunKnobs.model_fields or (
                    value != getattr(DEFAULTS, name)):
                out[config_key(name)] = value
        return out

    def resolved_run_name(self, flower_run_id: int) -> str:
        return self.run_name or f"{self.model}-fl-{flower_run_id}"


def config_key(field: str) -> str:
    """The run-config key of a settings field (``num_rounds`` → ``num-rounds``)."""
    return field.replace("_", "-")


def app_config_table() -> dict[str, RunConfigValue]:
    """The Flower app's ``[tool.flwr.app.config]``: the required keys (with
    :data:`APP_EXAMPLES`) first, then every knob with its default, in declaration order."""
    table: dict[str, RunConfigValue] = {config_key(k): v for k, v in APP_EXAMPLES.items()}
    for name in RunKnobs.model_fields:
        if name != "strategy_params":
            table[config_key(name)] = getattr(DEFAULTS, name)
    return table


def _describe(exc: ValidationError) -> str:
    """One line per problem, naming the run-config key."""
    parts = []
    for err in exc.errors():
        loc = ".".join(config_key(str(p)) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "missing":
            msg = "required key is missing"
        parts.append(f"run config {loc!r}: {msg}" if loc else f"run config: {msg}")
    return "; ".join(parts)
