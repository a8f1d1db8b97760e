"""Which version a device should run: from the aliases, sticky per device under a canary.

Every device of a model follows ``production``, except the share ``rollout_percent`` of the fleet
that follows ``canary`` while one exists. Membership is decided by :func:`bucket`, a hash of the
model's rollout salt, the model name and the device id onto [0, 100): it needs no state, it is
the same on every poll (sticky), and raising the percentage only *adds* devices to the canary
(those already in stay in). Other aliases (``shadow``, custom names) do not steer devices.

While a rollout is active (:mod:`registry.rollouts`), it decides instead
(:func:`registry.rollouts.strategies.arm_for_device`: canary share, waves by device label, A/B
variant) and the choice also names what the device should pre-download (blue-green, before the
switch) or run beside the active version as a shadow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlmodel import Session, col, select

from registry.catalog import get_model
from registry.errors import DamagedArtifactError, NotFoundError, PermissionDeniedError
from registry.models import CANARY, PRODUCTION, Alias, Device, Model, ModelVersion, VersionStatus
from registry.rollouts.routing import routing_view
from registry.rollouts.strategies import RoutingView, arm_for_device, prefetch_for, shadow_for
from registry.versions import LIGHT, get_version

__all__ = ["Choice", "assign", "bucket", "check_download", "in_canary"]

BUCKETS = 10_000


@dataclass(frozen=True)
class Choice:
    """The outcome of an assignment: a model, one of its READY versions, and the alias."""

    model: Model
    version: ModelVersion
    alias: str
    rollout_id: int | None = None
    variant: str | None = None
    prefetch: ModelVersion | None = None
    shadow: ModelVersion | None = None


def bucket(device_id: str, model: str, salt: str) -> float:
    """The device's stable position in [0, 100) for ``model`` (resolution 0.01)."""
    digest = hashlib.sha256(f"{salt}\x00{model}\x00{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % BUCKETS) * 100.0 / BUCKETS


def in_canary(device_id: str, model: str, salt: str, percent: float | None) -> bool:
    """Whether the device belongs to a canary covering ``percent`` % of the fleet."""
    return percent is not None and percent > 0 and bucket(device_id, model, salt) < percent


def _model_for(session: Session, device: Device, model: str | None) -> Model:
    if model is not None:
        return get_model(session, model)
    if device.model_id is not None:
        found = session.get(Model, device.model_id)
        assert found is not None
        return found
    # No model chosen: fine while the registry serves exactly one model in production.
    candidates = session.exec(
        select(Model)
        .join(Alias, col(Alias.model_id) == col(Model.id))
        .where(Alias.name == PRODUCTION)
    ).all()
    if len(candidates) == 1:
        return candidates[0]
    raise NotFoundError(
        f"no model is assigned to device {device.id!r}: enrol it with a model, set one with "
        "PATCH /api/v1/devices/{id}, or ask with ?model="
    )


def assign(session: Session, device: Device, model: str | None = None) -> Choice:
    """The version ``device`` should run for ``model`` (default: the device's model).

    :class:`NotFoundError` when the model has no ``production`` alias yet;
    :class:`DamagedArtifactError` when the version it names is DAMAGED (a damaged canary
    falls back to production).
    """
    m = _model_for(session, device, model)
    rows = session.exec(
        select(Alias.name, Alias.rollout_percent, ModelVersion)
        .join(ModelVersion, col(ModelVersion.id) == col(Alias.version_id))
        .options(*LIGHT)
        .where(Alias.model_id == m.id, col(Alias.name).in_((PRODUCTION, CANARY)))
    ).all()
    found = {name: (percent, version) for name, percent, version in rows}
    if PRODUCTION not in found:
        raise NotFoundError(f"model {m.name!r} has no production version yet")
    view = routing_view(session, m)
    if view is not None and view.routing:
        return _under_rollout(session, device, m, view, found[PRODUCTION][1])
    alias_name = PRODUCTION
    if (CANARY in found and found[CANARY][1].status == VersionStatus.READY
            and in_canary(device.id, m.name, m.rollout_salt, found[CANARY][0])):
        alias_name = CANARY  # a damaged canary falls back to production
    version = found[alias_name][1]
    if version.status == VersionStatus.DAMAGED:
        raise DamagedArtifactError(
            f"version {version.number} of {m.name!r} ({alias_name}) is DAMAGED and is not "
            f"handed out: {version.status_reason}"
        )
    return Choice(model=m, version=version, alias=alias_name)


def _ready_or_none(session: Session, model: Model, number: int | None) -> ModelVersion | None:
    if number is None:
        return None
    v = get_version(session, model, number)
    return v if v.status == VersionStatus.READY else None


def _under_rollout(
    session: Session, device: Device, m: Model, view: RoutingView, production: ModelVersion
) -> Choice:
    """The choice an active rollout makes (an arm that is not READY falls back to production)."""
    arm = arm_for_device(view, device.id, device.labels or {}, m.name, m.rollout_salt)
    chosen = None if arm is None else _ready_or_none(session, m, arm.version)
    prefetch = _ready_or_none(session, m, prefetch_for(view))
    shadow = _ready_or_none(session, m, shadow_for(view))
    if chosen is None or arm is None:
        if production.status == VersionStatus.DAMAGED:
            raise DamagedArtifactError(
                f"version {production.number} of {m.name!r} (production) is DAMAGED and is "
                f"not handed out: {production.status_reason}"
            )
        return Choice(model=m, version=production, alias=PRODUCTION, rollout_id=view.rollout_id,
                      variant="baseline", prefetch=prefetch, shadow=shadow)
    return Choice(model=m, version=chosen, alias=CANARY if arm.name == "candidate" else arm.name,
                  rollout_id=view.rollout_id, variant=arm.name, prefetch=prefetch, shadow=shadow)


def check_download(session: Session, device: Device, model: Model, version: ModelVersion) -> None:
    """Let a device read a version's artifacts only when the version is assigned to it.

    "Assigned" is the version its last poll was handed or the one a poll would hand it now
    (the alias may have moved between the poll and the download), including the version a
    rollout tells it to pre-download or to run as a shadow.
    """
    if version.status == VersionStatus.DAMAGED:
        raise DamagedArtifactError(
            f"version {version.number} of {model.name!r} is DAMAGED: {version.status_reason}"
        )
    if version.id is not None and version.id == device.assigned_version_id:
        return
    try:
        current = assign(session, device, model.name)
    except (NotFoundError, DamagedArtifactError):
        current = None
    allowed = set() if current is None else {
        v.id for v in (current.version, current.prefetch, current.shadow) if v is not None}
    if version.id not in allowed:
        raise PermissionDeniedError(
            f"version {version.number} of {model.name!r} is not assigned to device {device.id!r}"
        )
