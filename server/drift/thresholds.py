"""Drift thresholds: defaults, per-model overrides, and why the defaults are what they are.

The decision rule (see :func:`server.drift.report.compute_drift`)
-----------------------------------------------------------------
A feature is *drifted* when both

* its binned two-sample Kolmogorov–Smirnov p-value is below ``alpha / m`` (Bonferroni over the
  ``m`` tests of the window: every feature with at least ``min_samples`` finite values, plus the
  predicted-class test when the reference carries the model's own prediction histogram), and
* its PSI is at least ``psi_min`` (an effect-size floor: with a fleet's worth of samples KS
  rejects shifts too small to matter).

A window is ``drift`` when at least one test is drifted and the share of drifted features is at
least ``min_drifted_share`` (default 0: any) — or any feature is *strongly* drifted
(PSI >= ``psi_strong``). Bonferroni bounds the family-wise false-alarm rate by ``alpha`` whatever
the dependence between features (image pixels are strongly correlated), and the binned KS
statistic never exceeds the raw one (and is asymptotically conservative on discrete data), so
the rate stays below ``alpha`` = 5 % per window; the PSI floor only removes alarms. Windows with
fewer than ``min_samples`` rows are ``insufficient`` ("too few samples"), never drift/no drift.

Hysteresis (see :mod:`server.drift.events`): a model enters the drifted state after
``enter_windows`` consecutive ``drift`` windows and leaves it only after ``clear_windows``
consecutive sufficient windows in which *no* test passes the laxer exit rule
(p < ``exit_alpha / m`` and PSI >= ``psi_exit``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftThresholds(BaseModel):
    """Thresholds of the drift verdict for one model.

    Parameters
    ----------
    min_samples : int, default 200
        Rows (and per feature, finite values) below which a window is ``insufficient``.
    alpha : float, default 0.05
        Family-wise false-alarm rate per window (Bonferroni-split over the window's tests).
    psi_min : float, default 0.1
        PSI a significant feature must also reach to count as drifted ("moderate shift").
    psi_strong : float, default 0.25
        PSI of a *strong* shift ("major shift"); one strongly drifted feature makes the window
        drift even when ``min_drifted_share`` is not reached.
    min_drifted_share : float, default 0.0
        Share of tested features that must drift for the window to drift (0: any one).
    psi_epsilon : float, default 1e-4
        Smoothing of bin proportions in PSI: ``p' = (p + ε) / (1 + k·ε)`` on both sides.
    use_predictions : bool, default True
        Include the predicted-class chi-square test in the verdict when the reference has the
        model's prediction histogram (otherwise it is reported for information only).
    exit_alpha : float, default 0.25
        Laxer family-wise level of the hysteresis exit rule.
    psi_exit : float, default 0.05
        Laxer PSI floor of the hysteresis exit rule.
    enter_windows : int, default 1
        Consecutive drift windows before a ``drift_started`` event.
    clear_windows : int, default 2
        Consecutive clear windows before a ``drift_cleared`` event.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_samples: int = Field(200, ge=1)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    psi_min: float = Field(0.1, ge=0.0)
    psi_strong: float = Field(0.25, ge=0.0)
    min_drifted_share: float = Field(0.0, ge=0.0, le=1.0)
    psi_epsilon: float = Field(1e-4, gt=0.0, le=0.01)
    use_predictions: bool = True
    exit_alpha: float = Field(0.25, gt=0.0, lt=1.0)
    psi_exit: float = Field(0.05, ge=0.0)
    enter_windows: int = Field(1, ge=1)
    clear_windows: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DriftThresholds:
        if self.psi_strong < self.psi_min:
            raise ValueError("psi_strong must be >= psi_min")
        if self.exit_alpha < self.alpha or self.psi_exit > self.psi_min:
            raise ValueError(
                "the exit rule must be laxer: exit_alpha >= alpha and psi_exit <= psi_min"
            )
        return self


class ThresholdPolicy(BaseModel):
    """Default thresholds plus per-model overrides (by model name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: DriftThresholds = Field(default_factory=DriftThresholds)
    per_model: dict[str, DriftThresholds] = Field(default_factory=dict)

    def for_model(self, model: str) -> DriftThresholds:
        return self.per_model.get(model, self.default)
