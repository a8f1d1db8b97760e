"""Who gets which version under an active rollout: pure functions, no database.

:class:`RoutingView` is what routing needs of a rollout (built from its row by
:func:`view_of`); :func:`arm_for_device` and :func:`arm_for_caller` answer for one device or
one REST caller with an :class:`Arm` (the version and the arm's name), or ``None`` for the
baseline (``production``). Membership is a hash of the model's rollout salt, the model and the
device id or caller key onto [0, 100) (:func:`bucket`): stateless, the same on every call
(sticky), and growing a canary's share only *adds* members.

By strategy (while the rollout is running or awaiting approval):

``canary``      members: ``bucket < percent`` of the current step (devices and REST callers);
                for devices also, at the least, the ``ceil(percent · n / 100)`` of the model's
                ``n`` enrolled devices with the lowest positions (:func:`canary_floor`, carried
                as :attr:`RoutingView.floor`), so that a small fleet's step never holds no
                device. Both rules select a prefix of the devices ordered by position, so the
                members of a step are those of the step before plus more (for a fixed fleet);
``waves``       devices whose labels match the selector of any wave up to the current one (a
                wave without labels covers every device); REST callers stay on the baseline;
``blue_green``  nobody before the switch (devices are told to pre-download the candidate,
                :func:`prefetch_for`); after it ``production`` itself names the candidate;
``ab``          every device and caller: the variant whose cumulative weight range holds its
                bucket;
``shadow``      nobody; REST requests are copied to the candidate at ``shadow_rate``
                (:func:`shadow_sampled`, by request key); devices run it beside the active
                version (:func:`shadow_for`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.rollouts import StepSpec

__all__ = [
    "Arm",
    "RoutingView",
    "arm_for_caller",
    "arm_for_device",
    "bucket",
    "canary_floor",
    "default_steps",
    "labels_match",
    "prefetch_for",
    "shadow_for",
    "shadow_sampled",
    "view_of",
    "warm_versions",
]

BUCKETS = 10_000
#: The arm names of the single-candidate strategies.
CANDIDATE = "candidate"
BASELINE = "baseline"


def bucket(key: str, model: str, salt: str) -> float:
    """The stable position of ``key`` (a device id, a caller) in [0, 100) for ``model``."""
    digest = hashlib.sha256(f"{salt}\x00{model}\x00{key}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % BUCKETS) * 100.0 / BUCKETS


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` hold every ``key=value`` of ``selector`` (no selector: everyone)."""
    return not selector or all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Arm:
    """A rollout arm: its name (``candidate`` or an A/B variant) and the version it runs."""

    name: str
    version: int


@dataclass(frozen=True)
class RoutingView:
    """What routing needs of an active rollout (version numbers, not ids)."""

    rollout_id: int
    strategy: str
    state: str
    step: int
    phase: str
    candidate: int | None
    baseline: int | None
    percent: float | None = None
    selectors: tuple[Mapping[str, str] | None, ...] = ()
    variants: tuple[tuple[str, int, float], ...] = ()
    shadow_rate: float = 0.0
    #: canary: devices at a position ``<= floor`` are members whatever the percent says.
    floor: float | None = None

    @property
    def routing(self) -> bool:
        return self.state in ("running", "awaiting_approval")


def canary_floor(percent: float | None, positions: Sequence[float]) -> float | None:
    """The position of the ``ceil(percent · n / 100)``-th lowest of the ``n`` device
    ``positions`` (:func:`bucket`): a canary step holds at least the devices at or below it.
    ``None`` for no percent, a percent of 0 or no devices."""
    if not percent or percent <= 0 or not positions:
        return None
    k = min(len(positions), math.ceil(round(percent * len(positions) / 100.0, 9)))
    return sorted(positions)[k - 1] if k > 0 else None


def default_steps(strategy: str) -> list[StepSpec]:
    """The steps of a rollout started without any."""
    if strategy == "canary":
        return [StepSpec(percent=p, bake_s=60, timeout_s=900) for p in (5, 25, 50, 100)]
    if strategy == "blue_green":  # pre-download and warm, then the switch and its bake
        return [StepSpec(bake_s=30, timeout_s=900), StepSpec(bake_s=60, timeout_s=900)]
    return [StepSpec(bake_s=60, timeout_s=900)]


def view_of(
    rollout_id: int, strategy: str, state: str, step: int, phase: str, spec: Mapping[str, Any],
    candidate: int | None, baseline: int | None, awaiting: str | None = None,
) -> RoutingView:
    """The routing view of a rollout row (``spec`` is its stored :class:`RolloutCreate`).

    A rollout awaiting approval before step k routes as step k − 1 did (before the first
    step: not at all, as if pending).
    """
    steps = [StepSpec.model_validate(s) for s in spec.get("steps") or []]
    if state == "awaiting_approval" and awaiting not in (None, "promotion"):
        step -= 1
        if step < 0:
            state = "pending"
    current = steps[min(step, len(steps) - 1)] if steps else None
    selectors: tuple[Mapping[str, str] | None, ...] = ()
    if strategy == "waves":
        selectors = tuple(s.labels for s in steps[: min(step, len(steps) - 1) + 1])
    variants = tuple(
        (str(v["name"]), int(v["version"]), float(v.get("weight", 1.0)))
        for v in spec.get("variants") or []
    )
    return RoutingView(
        rollout_id=rollout_id, strategy=strategy, state=state, step=step, phase=phase,
        candidate=candidate, baseline=baseline,
        percent=current.percent if current is not None and strategy == "canary" else None,
        selectors=selectors, variants=variants,
        shadow_rate=float(spec.get("shadow_rate", 0.0)) if strategy == "shadow" else 0.0,
    )


def _variant(view: RoutingView, position: float) -> Arm:
    total = sum(w for _, _, w in view.variants)
    edge = 0.0
    for name, version, weight in view.variants:
        edge += 100.0 * weight / total
        if position < edge:
            return Arm(name, version)
    name, version, _ = view.variants[-1]
    return Arm(name, version)


def arm_for_device(
    view: RoutingView, device_id: str, labels: Mapping[str, str], model: str, salt: str
) -> Arm | None:
    """The arm ``device_id`` follows, or ``None`` for the baseline."""
    if not view.routing or (view.candidate is None and view.strategy != "ab"):
        return None
    if view.strategy == "canary":
        position = bucket(device_id, model, salt)
        inside = view.percent is not None and (
            position < view.percent or (view.floor is not None and position <= view.floor))
        return Arm(CANDIDATE, view.candidate or 0) if inside else None
    if view.strategy == "waves":
        inside = any(labels_match(labels, s) for s in view.selectors)
        return Arm(CANDIDATE, view.candidate or 0) if inside else None
    if view.strategy == "ab" and view.variants:
        return _variant(view, bucket(device_id, model, salt))
    return None


def arm_for_caller(view: RoutingView, caller_key: str, model: str, salt: str) -> Arm | None:
    """The arm a REST caller follows, or ``None`` for the baseline (waves: always ``None``)."""
    if not view.routing:
        return None
    if view.strategy == "canary" and view.candidate is not None:
        inside = view.percent is not None and bucket(caller_key, model, salt) < view.percent
        return Arm(CANDIDATE, view.candidate) if inside else None
    if view.strategy == "ab" and view.variants:
        return _variant(view, bucket(caller_key, model, salt))
    return None


def shadow_sampled(view: RoutingView, request_key: str, model: str, salt: str) -> bool:
    """Whether REST request ``request_key`` is copied to the shadow (deterministic)."""
    return (view.routing and view.strategy == "shadow" and view.candidate is not None
            and bucket(f"shadow\x00{request_key}", model, salt) < 100.0 * view.shadow_rate)


def prefetch_for(view: RoutingView) -> int | None:
    """The version devices should pre-download (blue-green, before the switch)."""
    if view.routing and view.strategy == "blue_green" and view.phase == "prefetch":
        return view.candidate
    return None


def shadow_for(view: RoutingView) -> int | None:
    """The version devices should run beside the active one without serving it."""
    return view.candidate if view.routing and view.strategy == "shadow" else None


def warm_versions(view: RoutingView | None, production: int | None) -> tuple[int, ...]:
    """The versions the server should keep loaded: production and every arm in play."""
    out: list[int] = [] if production is None else [production]
    if view is not None and view.routing:
        extra: Sequence[int | None] = [view.candidate, view.baseline, *(v for _, v, _ in
                                                                       view.variants)]
        out += [v for v in extra if v is not None and v not in out]
    return tuple(out)
