"""Routing of REST (V2) requests under a rollout, over an in-memory snapshot.

:func:`build_snapshot` reads a model's ``production`` alias and active rollout once (two small
queries) into an immutable :class:`ModelSnapshot`; :func:`choose` then answers each request
without I/O: the :class:`Route` (the version that answers and is returned, its arm, and the
version a copy goes to as a shadow, whose answer is logged and never returned). Resolve one
snapshot per request and use only it: a blue-green switch is one transaction, so a request sees
the old production or the new, never a mix. :func:`snapshot_token` changes whenever routing
could (an alias move, a rollout transition), for cheap revalidation of a cached snapshot.

Membership (canary share, A/B split) is :func:`registry.rollouts.strategies.bucket` of the
caller key: sticky per caller, as it is per device. :func:`routing_view` (what device
assignment reads) also carries a canary step's device floor
(:func:`registry.rollouts.strategies.canary_floor` over the model's enrolled, unrevoked
devices) on fleets of at most :data:`FLOOR_MAX_DEVICES` devices, where a hash share can miss
the percent by whole devices (a 25 % step of 3 devices is empty for 42 % of salts); larger fleets
follow the hash alone, so a device poll reads one count, not every device. REST callers follow
the percent alone. Shadow sampling hashes the request key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlmodel import Session, col, func, select

from registry.catalog import get_model
from registry.errors import NotFoundError
from registry.models import PRODUCTION, Alias, Device, Model, ModelVersion, Rollout
from registry.rollouts.queries import active_rollout, version_number
from registry.rollouts.strategies import (
    BASELINE,
    RoutingView,
    arm_for_caller,
    bucket,
    canary_floor,
    shadow_sampled,
    view_of,
    warm_versions,
)

__all__ = ["ModelSnapshot", "Route", "build_snapshot", "choose", "fleet", "fleet_positions",
           "routing_view", "snapshot_token"]


FLOOR_MAX_DEVICES = 1000
"""Above this many enrolled devices a canary step follows the hash share alone (module notes)."""


@dataclass(frozen=True)
class Route:
    """How to answer one request (see the module notes)."""

    version: int
    alias: str
    variant: str | None
    rollout_id: int | None
    shadow_version: int | None


@dataclass(frozen=True)
class ModelSnapshot:
    """One model's routing state at one moment."""

    model: str
    salt: str
    production: int | None
    rollout: RoutingView | None
    warm: tuple[int, ...]
    token: str


def routing_view(session: Session, model: Model) -> RoutingView | None:
    """The routing view of the model's active rollout (``None`` without one), with a canary
    step's device floor (module notes)."""
    row = active_rollout(session, model.id or 0)
    if row is None:
        return None
    view = _view(session, row)
    if view.strategy != "canary" or not view.routing or not view.percent:
        return view
    enrolled = session.exec(select(func.count()).select_from(Device).where(
        Device.model_id == model.id, col(Device.revoked_at).is_(None))).one()
    if enrolled > FLOOR_MAX_DEVICES:
        return view
    return replace(view, floor=canary_floor(view.percent, fleet_positions(session, model)))


def fleet(session: Session, model: Model) -> dict[str, dict[str, str]]:
    """The model's enrolled, unrevoked devices: id → labels (sorted by id)."""
    rows = session.exec(select(Device.id, Device.labels).where(
        Device.model_id == model.id, col(Device.revoked_at).is_(None))).all()
    return {d: dict(labels or {}) for d, labels in sorted(rows)}


def fleet_positions(session: Session, model: Model) -> list[float]:
    """The rollout positions (:func:`bucket`) of the model's enrolled, unrevoked devices."""
    return [bucket(d, model.name, model.rollout_salt) for d in fleet(session, model)]


def _view(session: Session, row: Rollout) -> RoutingView:
    return view_of(row.id or 0, row.strategy, row.state, row.step, row.phase, row.spec or {},
                   version_number(session, row.candidate_version_id),
                   version_number(session, row.baseline_version_id), row.awaiting)


def _token(prod: tuple[int, object] | None, row: Rollout | None) -> str:
    p = "-" if prod is None else f"{prod[0]}@{prod[1]}"
    r = "-" if row is None else f"{row.id}@{row.updated_at.isoformat()}"
    return f"{p}|{r}"


def _production(session: Session, model: Model) -> tuple[int, object] | None:
    row = session.exec(
        select(ModelVersion.number, Alias.updated_at)
        .join(ModelVersion, ModelVersion.id == Alias.version_id)  # type: ignore[arg-type]
        .where(Alias.model_id == model.id, Alias.name == PRODUCTION)
    ).first()
    return None if row is None else (int(row[0]), row[1])


def build_snapshot(session: Session, model: str) -> ModelSnapshot:
    """The routing snapshot of ``model`` now (:class:`NotFoundError` for an unknown model)."""
    m = get_model(session, model)
    prod = _production(session, m)
    row = active_rollout(session, m.id or 0)
    view = None if row is None else _view(session, row)
    production = None if prod is None else prod[0]
    return ModelSnapshot(model=m.name, salt=m.rollout_salt, production=production,
                         rollout=view, warm=warm_versions(view, production),
                         token=_token(prod, row))


def snapshot_token(session: Session, model: str) -> str:
    """What :attr:`ModelSnapshot.token` would be now (two indexed lookups)."""
    m = get_model(session, model)
    return _token(_production(session, m), active_rollout(session, m.id or 0))


def choose(snap: ModelSnapshot, *, caller_key: str, request_key: str) -> Route:
    """The route of one request; :class:`NotFoundError` when the model has no production."""
    view = snap.rollout
    if snap.production is None:
        raise NotFoundError(f"model {snap.model!r} has no production version; name a version")
    if view is None or not view.routing:
        return Route(snap.production, PRODUCTION, None, None, None)
    arm = arm_for_caller(view, caller_key, snap.model, snap.salt)
    shadow = (view.candidate if shadow_sampled(view, request_key, snap.model, snap.salt)
              else None)
    if arm is None:
        return Route(snap.production, PRODUCTION, BASELINE, view.rollout_id, shadow)
    return Route(arm.version, arm.name, arm.name, view.rollout_id, shadow)
