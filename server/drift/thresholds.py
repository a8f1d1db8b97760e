"""Drift thresholds: defaults, per-model overrides, and why the defaults are what they are.

The input-drift rule (see :func:`server.drift.report.compute_drift`)
--------------------------------------------------------------------
The tests of a window form one family with false-alarm rate ``alpha``: a share
``combined_share`` of it goes to the combined test over all features, the rest is split
(Bonferroni) over the per-feature tests (and the predicted-class test when the reference
carries the model's own predictions). Bonferroni holds whatever the dependence between
features.

* A **feature** is *drifted* when its binned two-sample KS p-value (exact Kolmogorov law,
  :func:`server.drift.stats.ks_pvalue`) is below its share of ``alpha`` and its bias-corrected
  PSI (:func:`server.drift.stats.chi2_divergence`, an unbiased estimate of the χ²-divergence,
  which PSI equals to second order) is at least ``psi_min``. Because the effect estimate has no
  sample-size bias, ``psi_min`` means the same at 200 rows and at 50,000: a shift above it is
  found more and more often as windows grow, a shift below it less and less.
* The **combined** test (:mod:`server.drift.combined`) sums the features' standardized
  location and spread scores against their null distribution under the training data's
  correlation, and counts when its p-value is below ``alpha · combined_share`` and its joint
  bias-corrected effect is at least ``psi_min``.
* The window is ``drift`` when the combined test counts, the predicted classes drifted, any
  feature is *strongly* drifted (bias-corrected PSI >= ``psi_strong``), or the drifted share of
  features reaches ``min_drifted_share`` (default 0: any).

Windows with fewer than ``min_samples`` rows are ``insufficient``. The KS p-values are exact at
any size; ``min_samples`` (default 30) is what the combined test's normal scores need (means
of 30 bounded scores). Performance drift and label-prior shift are verdicts of their own (see
:mod:`server.drift.labels`), each at level ``alpha``, on windows with ``min_labelled`` labels.

Hysteresis (see :mod:`server.drift.events`): a model enters the drifted state after
``enter_windows`` consecutive ``drift`` windows and leaves it only after ``clear_windows``
consecutive sufficient windows in which *no* test passes the laxer exit rule
(p < ``exit_alpha`` split the same way, effect >= ``psi_exit``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftThresholds(BaseModel):
    """Thresholds of the drift verdict for one model.

    Parameters
    ----------
    min_samples : int, default 30
        Rows (and per feature, finite values) below which a window is ``insufficient``.
    alpha : float, default 0.05
        False-alarm rate per window of each verdict (input drift, performance, label prior).
    combined_share : float, default 0.5
        Share of ``alpha`` spent on the combined test (0: no combined test); the rest is
        Bonferroni-split over the per-feature (and predicted-class) tests.
    psi_min : float, default 0.02
        Bias-corrected PSI a significant feature (or the combined test's joint effect) must
        also reach: about a 0.15σ mean shift of a normal feature on decile bins.
    psi_strong : float, default 0.25
        Bias-corrected PSI of a *strong* shift; one strongly drifted feature makes the window
        drift even when ``min_drifted_share`` is not reached.
    min_drifted_share : float, default 0.0
        Share of tested features that must drift for the window to drift (0: any one).
    psi_epsilon : float, default 1e-4
        Smoothing of bin proportions in the (raw, reported) PSI: ``p' = (p + ε) / (1 + k·ε)``.
    use_predictions : bool, default True
        Include the predicted-class chi-square test in the verdict when the reference has the
        model's prediction histogram (otherwise it is reported for information only).
    exit_alpha : float, default 0.25
        Laxer false-alarm rate of the hysteresis exit rule.
    psi_exit : float, default 0.01
        Laxer effect floor of the hysteresis exit rule.
    enter_windows : int, default 1
        Consecutive drift windows before a ``drift_started`` event.
    clear_windows : int, default 2
        Consecutive clear windows before a ``drift_cleared`` event.
    min_labelled : int, default 30
        Labelled predictions below which performance and label-prior verdicts are
        ``insufficient``.
    accuracy_metric : str, default "holdout.accuracy"
        The version metric holding its validation accuracy.
    accuracy_drop_min : float, default 0.02
        Drop below the validation accuracy that performance drift tolerates.
    prior_min : float, default 0.05
        Bias-corrected χ²-divergence of the label shares a label-prior shift must reach.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_samples: int = Field(30, ge=2)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    combined_share: float = Field(0.5, ge=0.0, lt=1.0)
    psi_min: float = Field(0.02, ge=0.0)
    psi_strong: float = Field(0.25, ge=0.0)
    min_drifted_share: float = Field(0.0, ge=0.0, le=1.0)
    psi_epsilon: float = Field(1e-4, gt=0.0, le=0.01)
    use_predictions: bool = True
    exit_alpha: float = Field(0.25, gt=0.0, lt=1.0)
    psi_exit: float = Field(0.01, ge=0.0)
    enter_windows: int = Field(1, ge=1)
    clear_windows: int = Field(2, ge=1)
    min_labelled: int = Field(30, ge=1)
    accuracy_metric: str = Field("holdout.accuracy", min_length=1, max_length=256)
    accuracy_drop_min: float = Field(0.02, ge=0.0, lt=1.0)
    prior_min: float = Field(0.05, ge=0.0)

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
