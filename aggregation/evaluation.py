"""Server-side evaluation of global weights, and the canary gate that uses it.

:class:`HoldoutEvaluator` loads the plan once in a TFLite interpreter
(:class:`edgefleet.runtime.PlanRuntime`) and evaluates any weights on a held-out set the server
keeps (never device data). :func:`canary_gate` compares a candidate's holdout metric with
production's *on the same holdout set* and says whether the ``canary`` alias may move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregation.errors import SettingsError
from edgefleet.errors import InputError
from edgefleet.plan import PlanManifest
from edgefleet.run_settings import DEFAULTS


@dataclass(frozen=True)
class Holdout:
    """A held-out evaluation set: raw features ``x`` and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) == 0 or len(self.x) != len(self.y):
            raise InputError(f"holdout needs as many labels as rows (> 0): {len(self.x)} rows, "
                             f"{len(self.y)} labels")

    @classmethod
    def load(cls, path: str | Path) -> Holdout:
        """Read an ``.npz`` file with arrays ``x`` and ``y`` (no pickles)."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                return cls(np.asarray(data["x"]), np.asarray(data["y"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"unreadable holdout file {path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), x=self.x, y=self.y)


class HoldoutEvaluator:
    """Evaluate weights of one plan on a holdout set; usable as ``evaluate_fn``.

    Parameters
    ----------
    plan : bytes
        The plan's TFLite bytes (verified against ``manifest``).
    manifest : PlanManifest
        The plan's manifest.
    holdout : Holdout
        The evaluation set.
    interpreter : str (default: "auto")
        Which TFLite interpreter :class:`~edgefleet.runtime.PlanRuntime` uses.
    """

    def __init__(
        self, plan: bytes, manifest: PlanManifest, holdout: Holdout, *, interpreter: str = "auto"
    ) -> None:
        from edgefleet.runtime import PlanRuntime

        self.runtime = PlanRuntime.from_bytes(plan, manifest, interpreter=interpreter)
        self.holdout = holdout

    def evaluate(self, weights: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``{"accuracy", "loss", "n"}`` of ``weights`` on the holdout set."""
        self.runtime.set_weights(weights)
        result = self.runtime.evaluate(self.holdout.x, self.holdout.y)
        return {"accuracy": result.accuracy, "loss": result.loss, "n": float(result.n)}

    def __call__(self, server_round: int, weights: Mapping[str, np.ndarray]) -> dict[str, float]:
        return self.evaluate(weights)


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate may become ``canary``, and why."""

    promote: bool
    reason: str
    metric: str
    candidate: float | None
    production: float | None


def canary_gate(
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    *,
    metric: str = DEFAULTS.gate_metric,
    max_drop: float = DEFAULTS.gate_max_drop,
    higher_is_better: bool = True,
) -> GateDecision:
    """Promote when the candidate is not worse than production by more than ``max_drop``.

    Parameters
    ----------
    candidate : Mapping[str, float]
        The candidate's holdout metrics.
    production : Mapping[str, float] or None
        Production's holdout metrics on the same set; ``None`` when there is no production
        version (then any candidate with a finite metric is promoted).
    metric : str (default: "accuracy")
        The metric compared.
    max_drop : float (default: 0.01)
        Tolerated degradation, in the metric's units.
    higher_is_better : bool (default: True)
        ``False`` for losses.
    """
    if max_drop < 0:
        raise SettingsError(f"max_drop must be >= 0, got {max_drop}")
    cand = candidate.get(metric)
    if cand is None or not math.isfinite(cand):
        return GateDecision(False, f"candidate has no finite {metric!r}", metric, cand, None)
    prod = None if production is None else production.get(metric)
    if prod is None or not math.isfinite(prod):
        return GateDecision(True, f"no production {metric!r} to compare with", metric, cand, None)
    drop = (prod - cand) if higher_is_better else (cand - prod)
    if drop > max_drop:
        return GateDecision(
            False, f"{metric} {cand:.4f} is {drop:.4f} worse than production {prod:.4f} "
            f"(> {max_drop})", metric, cand, prod,
        )
    return GateDecision(
        True, f"{metric} {cand:.4f} vs production {prod:.4f} (tolerance {max_drop})", metric,
        cand, prod,
    )
