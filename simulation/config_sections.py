"""The tables of an experiment (:class:`simulation.config.Experiment`): one frozen pydantic
model per TOML table, each refusing unknown keys, with the defaults and bounds of its settings.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.run_settings import DEFAULTS
from simulation.partitioners import PARTITIONS


class Section(BaseModel):
    """A table of the experiment file: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """Where the examples come from; the train/test split is stratified and seeded.

    ``source``: ``sklearn`` (``name`` one of ``edgefleet.datasets.DATASETS``), ``synthetic``
    (``sklearn.datasets.make_classification`` with ``n_samples``, ``n_features``, ``n_classes``,
    ``n_informative``, ``class_sep``), ``npz`` (``path`` with ``x``, ``y`` and optionally
    ``x_test``, ``y_test``) or ``csv`` (``path``, a header row, integer labels in
    ``label_column``, every other column a numeric feature).
    """

    source: Literal["sklearn", "synthetic", "npz", "csv"] = "sklearn"
    name: str = "digits"
    path: str = ""
    label_column: str = "label"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    n_samples: int = Field(20_000, ge=20)
    n_features: int = Field(20, ge=2)
    n_classes: int = Field(5, ge=2)
    n_informative: int = Field(10, ge=2)
    class_sep: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source in ("npz", "csv") and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path")
        if self.source == "synthetic" and self.n_informative > self.n_features:
            raise ValueError("data.n_informative must be <= data.n_features")
        return self


class ModelConfig(Section):
    """A zoo plan (built once with TensorFlow in a child process, cached) or a plan directory.

    ``zoo``: ``mlp`` (``hidden`` layers) or ``convnet`` (frozen random conv base with
    ``filters`` and a trainable dense head of ``hidden``; image data sets only). ``batch_size``
    is the plan's static train batch. ``plan_dir`` (a directory with ``plan.tflite``,
    ``manifest.json``, ``weights.safetensors``) overrides the zoo.
    """

    zoo: Literal["mlp", "convnet"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64])
    filters: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    plan_dir: str = ""


class PartitionConfig(Section):
    """How training examples are split among clients (see :mod:`simulation.partitioners`)."""

    kind: str = "iid"
    alpha: float = Field(0.5, gt=0)
    classes_per_client: int = Field(2, ge=1)
    quantity_alpha: float = Field(1.0, gt=0)
    min_size: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> PartitionConfig:
        if self.kind not in PARTITIONS:
            raise ValueError(f"partition.kind must be one of {PARTITIONS}, got {self.kind!r}")
        return self


class ClientsConfig(Section):
    """How many virtual clients, and how many train per round (count or fraction)."""

    count: int = Field(100, ge=2, le=100_000)
    per_round: int = Field(0, ge=0)
    fraction: float = Field(0.0, ge=0, le=1)
    over_selection: float = Field(1.3, ge=1.0)
    min_reports: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> ClientsConfig:
        if self.per_round > self.count:
            raise ValueError(
                f"per_round {self.per_round} > count {self.count}: a round cannot select more "
                "clients than there are"
            )
        return self

    def target(self) -> int:
        """Train replies that close a round (``per_round``, else ``fraction``, else 10)."""
        if self.per_round:
            return min(self.per_round, self.count)
        if self.fraction:
            return max(1, min(self.count, math.ceil(self.fraction * self.count)))
        return min(10, self.count)


BatchRule = Literal["wrap", "drop", "short"]
Weighting = Literal["local-size", "examples-trained"]


class TrainingConfig(Section):
    """Local training on the device: epochs, learning rate and the device's batch semantics.

    ``batch_rule`` and ``weighting`` are :func:`edgefleet.runtime.PlanRuntime.fit`'s
    ``batch_rule`` and the ClientApp's reported ``num-examples`` (see the README's "training
    semantics"); defaults are the edge ClientApp's.
    """

    epochs: int = Field(1, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_rule: BatchRule = "wrap"
    weighting: Weighting = "local-size"


class StrategyConfig(Section):
    """The Flower strategy (``aggregation.strategies.build_strategy``) and its parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)


class SelectionConfig(Section):
    """The selection policy and drift steering, as in production (``aggregation``).

    ``steering`` off means no extra epochs and no weight boost (``max_extra_epochs`` and
    ``drift_boost`` 0). Nodes report drift summaries in either case: the summary of
    ``traffic_rows`` inference inputs drawn from their current data. ``max_norm_ratio`` and
    ``max_update_norm`` are the validation bounds (0 = off); ``min_cosine`` is the direction
    bound (``-1`` = off), ``direction_mads`` its round-relative part (the bound is lowered to
    the round's median cosine minus this many robust deviations; ``-1`` = off, ``min_cosine``
    alone) and ``max_weight_ratio`` the weight cap (0 = off); all default to the production
    ones. ``query_max_age`` is the round loop's
    (``aggregation.answer_book``: 0 queries every node every round), ``query_share`` the share
    of a round's selected nodes it queries among the stale ones it passed over (with
    ``query_max_age > 0``). ``drift_share`` and
    ``drift_threshold`` are the drift policy's reserved share (``-1``: a weighted draw over
    everybody) and drifted-score threshold, ``full_effect`` the effect size at which a node's
    score reaches 1 (``aggregation.selection.drift``, ``aggregation.selection.tracking``).
    """

    policy: Literal["uniform", "drift"] = "uniform"
    drift_floor: float = Field(0.1, ge=0, le=1)
    drift_share: float = Field(0.7, ge=-1, le=1)
    drift_threshold: float = Field(0.5, gt=0, le=1)
    full_effect: float = Field(0.4, gt=0)
    fair_max_picks: int = Field(0, ge=0)
    fair_window: int = Field(5, ge=1)
    steering: bool = False
    max_extra_epochs: int = Field(6, ge=0)
    drift_boost: float = Field(1.0, ge=0)
    max_drift_boost: float = Field(0.5, ge=0)
    max_norm_ratio: float = Field(10.0, ge=0)
    max_update_norm: float = Field(0.0, ge=0)
    traffic_rows: int = Field(100, ge=1)
    min_cosine: float = Field(DEFAULTS.min_cosine if DEFAULTS.min_cosine is not None else -1.0,
                              ge=-1.0, le=1.0)
    direction_mads: float = Field(DEFAULTS.direction_mads, ge=-1)
    max_weight_ratio: float = Field(DEFAULTS.max_weight_ratio or 0.0, ge=0)
    query_max_age: int = Field(0, ge=0)
    query_share: float = Field(DEFAULTS.query_share, ge=0, le=1)


class TierConfig(Section):
    """A device speed tier: its share of the fleet, seconds per train step, link bandwidth."""

    name: str = "mid"
    share: float = Field(1.0, gt=0)
    step_s: float = Field(0.02, ge=0)
    up_mbps: float = Field(5.0, gt=0)
    down_mbps: float = Field(20.0, gt=0)


class TracesConfig(Section):
    """Device traces: availability, drop-out, speed tiers, the simulated wall clock.

    ``availability``: ``always``; ``diurnal`` (available when the device's local hour is in
    ``[window_start_h, window_end_h)``, time zones drawn uniformly from ``timezones``);
    ``onoff`` (alternating on/off sessions, exponential with means ``mean_on_s`` and
    ``mean_off_s``); ``file`` (``path``: CSV ``device,start_s,end_s`` availability intervals,
    optional ``tier`` column in a second file ``tiers_path``: ``device,tier``).
    ``dropout``: probability a selected device drops out during training. ``round_deadline_s``:
    the simulated deadline of a round; ``start_hour``: the simulated clock's start (UTC hour).
    """

    availability: Literal["always", "diurnal", "onoff", "file"] = "always"
    window_start_h: float = Field(22.0, ge=0, lt=24)
    window_end_h: float = Field(6.0, ge=0, le=24)
    timezones: list[int] = Field(default_factory=lambda: list(range(-8, 10)))
    mean_on_s: float = Field(1800.0, gt=0)
    mean_off_s: float = Field(1800.0, gt=0)
    path: str = ""
    tiers_path: str = ""
    dropout: float = Field(0.0, ge=0, le=1)
    tiers: list[TierConfig] = Field(default_factory=lambda: [TierConfig()])
    round_deadline_s: float = Field(600.0, gt=0)
    query_s: float = Field(1.0, ge=0)
    start_hour: float = Field(0.0, ge=0, lt=24)

    @model_validator(mode="after")
    def _check(self) -> TracesConfig:
        if self.availability == "file" and not self.path:
            raise ValueError("traces.availability='file' needs traces.path")
        return self


DriftKind = Literal["noise", "brightness", "scale", "rotation", "feature_shift", "label_prior",
                    "label_swap"]


class DriftConfig(Section):
    """One drift scenario (see :mod:`simulation.scenarios`)."""

    kind: DriftKind = "noise"
    fraction: float = Field(0.3, ge=0, le=1)
    start_round: int = Field(1, ge=1)
    mode: Literal["sudden", "gradual", "recurring"] = "sudden"
    strength: float = Field(1.0, ge=0)
    ramp_rounds: int = Field(5, ge=1)
    period: int = Field(5, ge=1)
    features: float = Field(0.5, gt=0, le=1)
    classes: list[int] = Field(default_factory=list)


class AdversaryConfig(Section):
    """Byzantine clients (see :mod:`simulation.adversaries`)."""

    kind: Literal["none", "sign_flip", "scaled", "noise", "label_flip"] = "none"
    fraction: float = Field(0.0, ge=0, le=1)
    scale: float = Field(10.0, ge=0)
    noise_std: float = Field(1.0, ge=0)


class EngineConfig(Section):
    """Flower's simulation engine (Ray): cluster address and resources.

    ``ray_address`` empty starts a local Ray instance for the run; ``"auto"`` or
    ``"HOST:PORT"`` (a head's GCS address, as ``ray start --head`` prints) joins an existing
    cluster, whose worker nodes must have this project installed. ``num_cpus`` bounds the local
    instance (0: all cores); ``client_cpus`` is each virtual client's CPU share. ``kind =
    "inprocess"`` runs the same Flower runtime without Ray (:mod:`simulation.inprocess`: the
    ClientApp in ``num_cpus`` threads of the driver), for sweeps of small runs on one machine.
    """

    kind: Literal["ray", "inprocess"] = "ray"
    ray_address: str = ""
    num_cpus: int = Field(2, ge=0)
    client_cpus: float = Field(1.0, gt=0)
    timeout_s: float = Field(3600.0, gt=0)


class OutputConfig(Section):
    """Where results go (``dir``; default ``var/sim/<name>``) and what is drawn."""

    dir: str = ""
    plots: bool = True
    html: bool = True
    progress: bool = True
    recover_within: float = Field(0.02, ge=0)


class ReplayConfig(Section):
    """Frozen inputs (``path``: NPZ, see :mod:`simulation.replay`); empty = no replay."""

    path: str = ""
