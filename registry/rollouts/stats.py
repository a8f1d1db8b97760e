"""The A/B comparison: a two-sided two-proportion z-test on labelled accuracy.

For variants A (control) and B with ``x`` correct of ``n`` labelled instances each, the pooled
proportion is ``p = (x_a + x_b) / (n_a + n_b)``, the statistic
``z = (p_b − p_a) / sqrt(p (1 − p) (1/n_a + 1/n_b))`` and the p-value ``erfc(|z| / √2)``.
The test runs only when every variant has at least ``min_samples`` labelled instances
(default 200 in :class:`edgefleet.rollouts.RolloutCreate`, where the normal approximation holds
for accuracies between 0.03 and 0.97); otherwise it reports ``sufficient=False`` and decides
nothing. With more than one challenger each is tested at ``alpha / (k − 1)`` (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ABResult", "ArmSample", "compare", "two_proportion_z"]


@dataclass(frozen=True)
class ArmSample:
    name: str
    version: int
    n: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None


def two_proportion_z(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """``(z, two-sided p-value)`` of B's proportion against A's (both ``n`` > 0)."""
    p = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (x_b / n_b - x_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class ABResult:
    """Per-variant figures, each challenger's test against the control, and the winner."""

    test: str
    alpha: float
    min_samples: int
    sufficient: bool
    arms: list[dict[str, Any]]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    winner: str | None = None
    significant: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(arms: Sequence[ArmSample], *, alpha: float, min_samples: int) -> ABResult:
    """Test each arm against ``arms[0]`` (Bonferroni: ``alpha / (k − 1)`` each)."""
    rows = [{"name": a.name, "version": a.version, "n": a.n, "correct": a.correct,
             "accuracy": a.accuracy} for a in arms]
    base = dict(test="two-proportion z-test (two-sided, pooled; Bonferroni over challengers)",
                alpha=alpha, min_samples=min_samples, arms=rows)
    short = [a.name for a in arms if a.n < min_samples]
    if short:
        return ABResult(sufficient=False, reason=f"too little data: {', '.join(short)} below "
                        f"{min_samples} labelled", **base)  # type: ignore[arg-type]
    control, level = arms[0], alpha / max(1, len(arms) - 1)
    comparisons, best, best_sig = [], control, False
    for arm in arms[1:]:
        z, p = two_proportion_z(control.correct, control.n, arm.correct, arm.n)
        sig = p < level
        comparisons.append({"control": control.name, "variant": arm.name, "z": z,
                            "p_value": p, "significant": sig})
        if sig and (arm.accuracy or 0) > (best.accuracy or 0):
            best, best_sig = arm, True
    if not best_sig:
        worse = [c for c in comparisons if c["significant"]]
        names = [str(c["variant"]) for c in worse]
        reason = ("no challenger beats the control significantly"
                  + (f"; worse: {', '.join(names)}" if names else ""))
        return ABResult(sufficient=True, comparisons=comparisons, winner=control.name,
                        significant=False, reason=reason, **base)  # type: ignore[arg-type]
    return ABResult(sufficient=True, comparisons=comparisons, winner=best.name, significant=True,
                    reason=f"{best.name} beats {control.name} (p < {level:.3g})",
                    **base)  # type: ignore[arg-type]
