"""Rollout schemas shared by the server's ``/api/v1/rollouts`` resource and the operator's CLI.

Routes (admin)::

    POST /api/v1/rollouts                      RolloutCreate -> RolloutInfo (201)
    GET  /api/v1/rollouts?model=&state=&active=  -> Page[RolloutInfo]
    GET  /api/v1/rollouts/{id}                 -> RolloutInfo
    POST /api/v1/rollouts/{id}/approve         RolloutApprove -> RolloutInfo
    POST /api/v1/rollouts/{id}/abort           RolloutAbort -> RolloutInfo
    GET  /api/v1/rollouts/{id}/history         -> list[RolloutEventInfo]  (the timeline)

A rollout moves ``candidate`` towards ``production`` of ``model`` by a ``strategy``:

``canary``      steps of fleet (and REST caller) share, sticky per device/caller;
``waves``       steps of device-label selectors (cumulative: wave k covers waves 1..k);
``blue_green``  a pre-download/warm step on the baseline, then one switch of ``production``;
``ab``          fixed split between ``variants`` for ``horizon_s``, then a two-proportion z-test;
``shadow``      a sampled copy of REST traffic (and an on-device shadow run) for ``horizon_s``.

Each step waits ``bake_s`` and passes only when every guard passes; a guard without enough
data waits, and the step fails when ``timeout_s`` elapses without passing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.bounds import NAME_PATTERN, CleanText, Labels, VersionNumber

__all__ = [
    "ACTIVE_STATES",
    "GUARD_KINDS",
    "ErrorStatuses",
    "GuardKind",
    "GuardSpec",
    "RolloutAbort",
    "RolloutApprove",
    "RolloutCreate",
    "RolloutEventInfo",
    "RolloutInfo",
    "RolloutState",
    "StepSpec",
    "Strategy",
    "VariantSpec",
    "default_guards",
]

Strategy = Literal["canary", "waves", "blue_green", "ab", "shadow"]
RolloutState = Literal[
    "pending", "running", "awaiting_approval", "promoted", "rolled_back", "aborted"
]
#: States in which a rollout still steers its model (at most one per model).
ACTIVE_STATES: tuple[str, ...] = ("pending", "running", "awaiting_approval")
GuardKind = Literal[
    "device_accuracy",
    "feedback_accuracy",
    "error_rate",
    "fallback_rate",
    "latency_p99",
    "device_failures",
    "prediction_shift",
    "shadow_agreement",
]
GUARD_KINDS: tuple[str, ...] = GuardKind.__args__  # type: ignore[attr-defined]
#: Which answers the ``error_rate`` guard counts: ``all`` (status >= 400) or ``server`` (>= 500).
ErrorStatuses = Literal["all", "server"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuardSpec(_Wire):
    """One guard. ``margin`` by kind (candidate C against baseline B on the same window):

    accuracies: fail when C < B − margin; ``error_rate``/``fallback_rate``: fail when
    C > B + margin; ``latency_p99``: fail when C > B · (1 + margin); ``device_failures``: fail
    when C's smoke failures + crashes + rollbacks exceed margin; ``prediction_shift``: fail when
    the PSI of C's prediction histogram against B's exceeds margin; ``shadow_agreement``: fail
    when C's agreement with production is below 1 − margin. ``min_samples``: the least sample
    (labelled instances, requests, inferences, reporting devices, predictions, comparisons) on
    each side before the guard decides. ``statuses`` (``error_rate`` only): ``all`` counts every
    answer with status >= 400, ``server`` only those >= 500 (a caller's malformed bodies, 4xx,
    then never fail a candidate).
    """

    kind: GuardKind
    margin: float = Field(default=0.02, ge=0, le=1e6, allow_inf_nan=False)
    min_samples: int = Field(default=30, ge=1, le=10**9)
    statuses: ErrorStatuses = Field(
        default="all", description="error_rate: the errors counted, 'all' (status >= 400) or "
                                   "'server' (status >= 500)")

    @model_validator(mode="after")
    def _statuses(self) -> GuardSpec:
        if self.statuses != "all" and self.kind != "error_rate":
            raise ValueError(f"statuses applies to the error_rate guard only, not {self.kind}")
        return self


def default_guards() -> list[GuardSpec]:
    return [
        GuardSpec(kind="device_accuracy", margin=0.03, min_samples=50),
        GuardSpec(kind="device_failures", margin=0, min_samples=1),
    ]


class StepSpec(_Wire):
    """One step: a fleet share (``canary``) or a label selector (``waves``)."""

    percent: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    labels: Labels | None = None
    bake_s: float = Field(default=60.0, ge=0, le=30 * 86400, allow_inf_nan=False)
    timeout_s: float = Field(default=900.0, gt=0, le=90 * 86400, allow_inf_nan=False)
    approval: bool = Field(default=False, description="wait for an operator before this step")

    @model_validator(mode="after")
    def _times(self) -> StepSpec:
        if self.timeout_s < self.bake_s:
            raise ValueError("a step's timeout_s must be at least its bake_s")
        return self


class VariantSpec(_Wire):
    """One A/B arm: a name, a READY version and its share of traffic (weights are relative)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    version: VersionNumber
    weight: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)


class RolloutCreate(_Wire):
    """Start a rollout of ``candidate`` of ``model`` (baseline: its ``production`` version)."""

    model: str = Field(pattern=NAME_PATTERN)
    candidate: VersionNumber | None = Field(
        default=None, description="the candidate; for ab, the variants name the versions"
    )
    strategy: Strategy = "canary"
    steps: list[StepSpec] | None = Field(default=None, max_length=50)
    guards: list[GuardSpec] = Field(default_factory=default_guards, max_length=20)
    approval: bool = Field(default=False, description="wait for an operator before promoting")
    variants: list[VariantSpec] | None = Field(default=None, max_length=8)
    horizon_s: float = Field(default=600.0, gt=0, le=90 * 86400, allow_inf_nan=False)
    shadow_rate: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)
    baseline_window_s: float = Field(
        default=3600.0, ge=0, le=30 * 86400, allow_inf_nan=False,
        description="the baseline's evidence reaches this far back before the rollout started",
    )
    prefetch_devices: int = Field(
        default=1, ge=0, le=10**7,
        description="blue_green: devices that must report the candidate pre-downloaded and "
                    "smoke-tested (a 'prefetched' event) before the switch; 0: REST only",
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, allow_inf_nan=False)
    min_samples: int = Field(default=200, ge=1, le=10**9,
                             description="ab: labelled instances per variant before the test")
    auto_promote: bool = Field(default=True,
                               description="ab: promote a significant winner without approval")
    reason: CleanText = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _shape(self) -> RolloutCreate:
        if self.strategy == "ab":
            if not self.variants or len(self.variants) < 2:
                raise ValueError("an ab rollout needs at least two variants")
            names = [v.name for v in self.variants]
            if len(set(names)) != len(names):
                raise ValueError("variant names must be distinct")
        elif self.candidate is None:
            raise ValueError(f"a {self.strategy} rollout needs a candidate version")
        if self.strategy == "canary":
            for s in self.steps or []:
                if s.percent is None:
                    raise ValueError("every canary step needs a percent")
            pcts = [s.percent or 0 for s in self.steps or []]
            if pcts != sorted(pcts):
                raise ValueError("canary percentages must not decrease")
        if self.strategy == "waves":
            if not self.steps:
                raise ValueError("a waves rollout needs steps with labels")
            if any(not s.labels for s in self.steps[:-1]):
                raise ValueError("every wave but the last needs labels (the last may be all)")
        return self


class RolloutApprove(_Wire):
    variant: str | None = Field(default=None, description="ab: the variant to promote")
    reason: CleanText = Field(default="", max_length=1000)


class RolloutAbort(_Wire):
    reason: CleanText = Field(default="aborted by an operator", max_length=1000)


class RolloutEventInfo(BaseModel):
    """One transition of the timeline, with the evidence behind it."""

    id: int
    at: datetime
    kind: str
    from_state: str | None
    to_state: str
    step: int
    actor: str
    message: str
    evidence: dict[str, Any] | None = None


class RolloutInfo(BaseModel):
    id: int
    model: str
    strategy: Strategy
    candidate: int | None
    baseline: int | None
    state: RolloutState
    step: int = Field(description="index of the current step (0-based); len(steps) at the end")
    steps: list[StepSpec]
    guards: list[GuardSpec]
    spec: dict[str, Any]
    step_started_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    created_by: str
    reason: str
    awaiting: str | None = Field(default=None, description="what an approval would release")
    last_decision: dict[str, Any] | None = None
