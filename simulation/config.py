"""The experiment: one pydantic object, read from TOML by ``edgefleet sim run EXPERIMENT.toml``.

Every table of the TOML file is a field of :class:`Experiment` (unknown keys are refused, with
their path, so a typo never silently falls back to a default). The Python API takes the same
object: ``run_experiment(Experiment(...))`` or ``run_experiment(load_experiment(path))``.

Example (``examples/digits_dirichlet.toml``)::

    name = "digits-dirichlet"
    rounds = 50
    seed = 0
    [data]
    source = "sklearn"
    name = "digits"
    [model]
    zoo = "mlp"
    [partition]
    kind = "dirichlet"
    alpha = 0.5
    [clients]
    count = 100
    per_round = 20

The tables themselves (``DataConfig`` … ``ReplayConfig``) are defined in
:mod:`simulation.config_sections` and importable from here.

A ``[sweep]`` table maps dotted keys to lists (``"selection.policy" = ["uniform", "drift"]``,
``seed = [0, 1, 2]``); :func:`expand_sweep` gives one experiment per combination.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edgefleet.errors import describe_validation
from simulation.config_sections import (
    AdversaryConfig,
    BatchRule,
    ClientsConfig,
    DataConfig,
    DriftConfig,
    DriftKind,
    EngineConfig,
    ModelConfig,
    OutputConfig,
    PartitionConfig,
    ReplayConfig,
    Section,
    SelectionConfig,
    StrategyConfig,
    TierConfig,
    TracesConfig,
    TrainingConfig,
    Weighting,
)
from simulation.errors import ConfigError

__all__ = [
    "AdversaryConfig",
    "BatchRule",
    "ClientsConfig",
    "DataConfig",
    "DriftConfig",
    "DriftKind",
    "EngineConfig",
    "Experiment",
    "ModelConfig",
    "OutputConfig",
    "PartitionConfig",
    "ReplayConfig",
    "SelectionConfig",
    "StrategyConfig",
    "TierConfig",
    "TracesConfig",
    "TrainingConfig",
    "Weighting",
    "expand_sweep",
    "load_experiment",
    "parse_experiment",
]


class Experiment(Section):
    """One experiment; every table of the TOML file is one field (see the module notes)."""

    name: str = "experiment"
    seed: int = 0
    rounds: int = Field(10, ge=1, le=100_000)
    backend: Literal["flower", "tff"] = "flower"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    partition: PartitionConfig = PartitionConfig()
    clients: ClientsConfig = ClientsConfig()
    training: TrainingConfig = TrainingConfig()
    strategy: StrategyConfig = StrategyConfig()
    selection: SelectionConfig = SelectionConfig()
    traces: TracesConfig = TracesConfig()
    drift: list[DriftConfig] = Field(default_factory=list)
    adversary: AdversaryConfig = AdversaryConfig()
    engine: EngineConfig = EngineConfig()
    output: OutputConfig = OutputConfig()
    replay: ReplayConfig = ReplayConfig()
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    def out_dir(self) -> Path:
        return Path(self.output.dir or f"var/sim/{self.name}")

    def results_key(self) -> str:
        """The experiment without its output and engine tables (what determines the results)."""
        return self.model_dump_json(exclude={"output", "engine", "sweep"})


def parse_experiment(data: dict[str, Any], *, base: Path | None = None) -> Experiment:
    """Validate a dict (a parsed TOML file); relative paths are taken from ``base``."""
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid experiment: {describe_validation(exc)}") from exc
    return _resolve_paths(exp, base) if base is not None else exp


def _resolve_paths(exp: Experiment, base: Path) -> Experiment:
    def fix(p: str) -> str:
        return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

    return exp.model_copy(update={
        "data": exp.data.model_copy(update={"path": fix(exp.data.path)}),
        "model": exp.model.model_copy(update={"plan_dir": fix(exp.model.plan_dir)}),
        "traces": exp.traces.model_copy(update={"path": fix(exp.traces.path),
                                                "tiers_path": fix(exp.traces.tiers_path)}),
        "replay": exp.replay.model_copy(update={"path": fix(exp.replay.path)}),
    })


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment TOML file (:class:`ConfigError` with the key's path when invalid)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    return parse_experiment(data, base=p.parent)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` (a list index for ``drift.0.fraction``) in a nested dict."""
    keys = dotted.split(".")
    node: Any = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def expand_sweep(exp: Experiment) -> list[tuple[dict[str, Any], Experiment]]:
    """One ``(point, experiment)`` per combination of the ``sweep`` table (or the one itself)."""
    if not exp.sweep:
        return [({}, exp)]
    keys = list(exp.sweep)
    out = []
    for values in itertools.product(*(exp.sweep[k] for k in keys)):
        data = exp.model_dump(exclude={"sweep"})
        point = dict(zip(keys, values, strict=True))
        try:
            for key, value in point.items():
                _set(data, key, value)
        except (IndexError, ValueError, TypeError) as exc:
            raise ConfigError(f"sweep key {key!r} does not name a setting: {exc}") from exc
        label = _label(point)
        data["name"] = f"{exp.name}/{label}"
        data["output"] = {**data["output"], "dir": str(exp.out_dir() / label)}
        out.append((point, parse_experiment(data)))
    return out


def _value_label(v: Any) -> str:
    if isinstance(v, dict):
        return "+".join(f"{k}={_value_label(x)}" for k, x in v.items() if k != "params")
    return str(v)


def _label(point: dict[str, Any]) -> str:
    """A directory-safe name of a sweep point (``policy=drift+steering=True-seed=1``)."""
    raw = "-".join(f"{k.split('.')[-1]}={_value_label(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9=+._-]", "_", raw)
