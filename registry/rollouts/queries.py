"""Reading rollouts: one, a filtered page, the active one of a model, the timeline.

:func:`rollout_info` and :func:`timeline` render rows as :class:`edgefleet.rollouts.RolloutInfo`
and :class:`edgefleet.rollouts.RolloutEventInfo` (version numbers, not ids).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.rollouts import ACTIVE_STATES, GuardSpec, RolloutEventInfo, RolloutInfo, StepSpec
from edgefleet.wire import Page
from registry.catalog import get_model
from registry.errors import InvalidQueryError, NotFoundError
from registry.models import Model, ModelVersion, Rollout, RolloutEvent

__all__ = [
    "active_rollout",
    "active_rollout_ids",
    "get_rollout",
    "list_rollouts",
    "rollout_info",
    "timeline",
    "version_number",
]


def get_rollout(session: Session, rollout_id: int, *, for_update: bool = False) -> Rollout:
    """The rollout ``rollout_id``; :class:`NotFoundError` when there is none."""
    stmt = select(Rollout).where(Rollout.id == rollout_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.exec(stmt).first()
    if row is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    return row


def active_rollout(session: Session, model_id: int) -> Rollout | None:
    """The model's active rollout (pending, running or awaiting approval), if any."""
    return session.exec(select(Rollout).where(Rollout.active_model_id == model_id)).first()


def active_rollout_ids(session: Session) -> list[int]:
    """The ids of every active rollout, oldest first."""
    return [int(i) for i in session.exec(
        select(Rollout.id).where(col(Rollout.active_model_id).is_not(None))
        .order_by(col(Rollout.id))
    ).all() if i is not None]


def version_number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    v = session.get(ModelVersion, version_id)
    return None if v is None else v.number


def rollout_info(session: Session, row: Rollout) -> RolloutInfo:
    model = session.get(Model, row.model_id)
    assert model is not None
    spec = dict(row.spec or {})
    return RolloutInfo(
        id=row.id or 0,
        model=model.name,
        strategy=row.strategy,  # type: ignore[arg-type]
        candidate=version_number(session, row.candidate_version_id),
        baseline=version_number(session, row.baseline_version_id),
        state=row.state,  # type: ignore[arg-type]
        step=row.step,
        steps=[StepSpec.model_validate(s) for s in spec.get("steps") or []],
        guards=[GuardSpec.model_validate(g) for g in spec.get("guards") or []],
        spec=spec,
        step_started_at=row.step_started_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        created_by=row.created_by,
        reason=row.reason,
        awaiting=row.awaiting,
        last_decision=row.last_decision,
    )


def list_rollouts(
    session: Session,
    *,
    model: str | None = None,
    state: str | None = None,
    active: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[RolloutInfo]:
    """Rollouts, newest first, filtered by model, state and activity."""
    where: list[sa.ColumnElement[bool]] = []
    if model is not None:
        where.append(col(Rollout.model_id) == get_model(session, model).id)
    if state is not None:
        from edgefleet.rollouts import RolloutState

        if state not in RolloutState.__args__:  # type: ignore[attr-defined]
            raise InvalidQueryError(f"unknown state {state!r}; one of "
                                    f"{', '.join(RolloutState.__args__)}")  # type: ignore[attr-defined]
        where.append(col(Rollout.state) == state)
    if active is not None:
        where.append(col(Rollout.state).in_(ACTIVE_STATES) if active
                     else col(Rollout.state).not_in(ACTIVE_STATES))
    total = session.exec(select(sa.func.count()).select_from(Rollout).where(*where)).one()
    rows = session.exec(select(Rollout).where(*where).order_by(col(Rollout.id).desc())
                        .limit(limit).offset(offset)).all()
    return Page[RolloutInfo](items=[rollout_info(session, r) for r in rows], total=total,
                             limit=limit, offset=offset)


def timeline(session: Session, rollout_id: int) -> list[RolloutEventInfo]:
    """Every transition of the rollout, oldest first."""
    get_rollout(session, rollout_id)
    events: Sequence[RolloutEvent] = session.exec(
        select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id)
        .order_by(col(RolloutEvent.at), col(RolloutEvent.id))
    ).all()
    return [
        RolloutEventInfo(id=e.id or 0, at=e.at, kind=e.kind, from_state=e.from_state,
                         to_state=e.to_state, step=e.step, actor=e.actor, message=e.message,
                         evidence=e.evidence)
        for e in events
    ]
