"""Aliases: move them, remove them, roll them back, and answer for any past moment.

Every change appends an :class:`~registry.models.AliasEvent` (when, from, to, by whom, why) in
the same transaction as the change itself; nothing ever updates or deletes an event. Hence:

* :func:`alias_at` — what an alias pointed at, at time T — is the newest event at or before T;
* :func:`rollback_alias` moves an alias back to where its latest move took it from.

Only READY versions can be aliased (:class:`VersionNotReadyError` otherwise). A ``canary`` (or any
alias other than ``production``) may carry a ``rollout_percent``: the share of the fleet that
follows it (see :mod:`registry.assignment`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.wire import ALIAS_PATTERN, AliasEventInfo, AliasInfo, AliasMove, Page
from registry import audit
from registry.catalog import get_model
from registry.errors import ConflictError, InvalidQueryError, NotFoundError
from registry.models import (
    CANARY,
    PRODUCTION,
    Alias,
    AliasEvent,
    Model,
    ModelVersion,
    utcnow,
)
from registry.versions import get_version, require_ready

__all__ = [
    "alias_at",
    "alias_history",
    "alias_info",
    "delete_alias",
    "get_alias",
    "list_aliases",
    "rollback_alias",
    "set_alias",
]


def _check_name(alias: str) -> None:
    if not re.match(ALIAS_PATTERN, alias):
        raise InvalidQueryError(
            f"invalid alias name {alias!r} (lowercase letters, digits, '_' and '-', at most 64)"
        )


def get_alias(session: Session, model: Model | str, alias: str) -> Alias:
    """The alias row; :class:`NotFoundError` when the model has no such alias."""
    m = get_model(session, model) if isinstance(model, str) else model
    row = session.exec(select(Alias).where(Alias.model_id == m.id, Alias.name == alias)).first()
    if row is None:
        raise NotFoundError(f"model {m.name!r} has no alias {alias!r}")
    return row


def set_alias(
    session: Session,
    model_name: str,
    alias: str,
    move: AliasMove,
    *,
    actor: str,
    default_rollout_percent: float = 10.0,
) -> Alias:
    """Point ``alias`` at READY version ``move.version`` (creating the alias when new).

    ``production`` always covers the whole fleet (a ``rollout_percent`` is refused); a new
    ``canary`` without one gets ``default_rollout_percent``; otherwise an alias keeps its
    percentage unless a new one is given. Moving an alias where it already is, with the same
    percentage, changes nothing and records nothing.
    """
    _check_name(alias)
    if alias == PRODUCTION and move.rollout_percent is not None:
        raise InvalidQueryError("production serves the whole fleet; it takes no rollout_percent")
    model = get_model(session, model_name, for_update=True)
    target = require_ready(get_version(session, model, move.version), model.name)
    row = session.exec(select(Alias).where(Alias.model_id == model.id, Alias.name == alias)).first()
    percent = move.rollout_percent
    if percent is None and row is not None:
        percent = row.rollout_percent
    if percent is None and alias == CANARY:
        percent = default_rollout_percent
    if row is not None and row.version_id == target.id and row.rollout_percent == percent:
        return row
    return _move(session, model, alias, row, target, percent, actor=actor, reason=move.reason)


def _move(
    session: Session,
    model: Model,
    alias: str,
    row: Alias | None,
    target: ModelVersion,
    percent: float | None,
    *,
    actor: str,
    reason: str,
) -> Alias:
    now = utcnow()
    before = _audit_state(session, row)
    session.add(
        AliasEvent(
            model_id=model.id or 0,
            alias=alias,
            from_version_id=row.version_id if row is not None else None,
            to_version_id=target.id,
            rollout_percent=percent,
            at=now,
            actor=actor,
            reason=reason,
        )
    )
    if row is None:
        row = Alias(model_id=model.id or 0, name=alias, version_id=target.id or 0, updated_by=actor)
    row.version_id = target.id or 0
    row.rollout_percent = percent
    row.updated_at = now
    row.updated_by = actor
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="alias.move", target=f"{model.name}/{alias}",
                 before=before, after=_audit_state(session, row), reason=reason or None)
    return row


def _audit_state(session: Session, row: Alias | None) -> dict[str, object] | None:
    """Where ``row`` points (version number, rollout percent), for the audit trail."""
    if row is None:
        return None
    version = session.get(ModelVersion, row.version_id)
    return {"version": version.number if version else None, "rollout_percent": row.rollout_percent}


def delete_alias(session: Session, model_name: str, alias: str, *, actor: str, reason: str) -> None:
    """Remove an alias (the history keeps the removal, ``to_version`` = None)."""
    model = get_model(session, model_name, for_update=True)
    row = get_alias(session, model, alias)
    audit.record(session, actor=actor, action="alias.delete", target=f"{model.name}/{alias}",
                 before=_audit_state(session, row), reason=reason or None)
    session.add(
        AliasEvent(
            model_id=model.id or 0,
            alias=alias,
            from_version_id=row.version_id,
            to_version_id=None,
            rollout_percent=None,
            actor=actor,
            reason=reason,
        )
    )
    session.delete(row)
    session.flush()


def rollback_alias(
    session: Session, model_name: str, alias: str, *, actor: str, reason: str = "rollback"
) -> Alias:
    """Move ``alias`` back to the version its latest move took it from.

    :class:`ConflictError` when there is nothing to go back to (the alias was only ever set
    once) and :class:`VersionNotReadyError` when that version is no longer READY.
    """
    model = get_model(session, model_name, for_update=True)
    last = session.exec(
        select(AliasEvent)
        .where(AliasEvent.model_id == model.id, AliasEvent.alias == alias)
        .order_by(col(AliasEvent.at).desc(), col(AliasEvent.id).desc())
        .limit(1)
    ).first()
    if last is None:
        raise NotFoundError(f"model {model.name!r} has no alias {alias!r}")
    if last.from_version_id is None:
        raise ConflictError(f"alias {alias!r} of {model.name!r} has no earlier version")
    target = session.get(ModelVersion, last.from_version_id)
    assert target is not None
    require_ready(target, model.name)
    row = session.exec(select(Alias).where(Alias.model_id == model.id, Alias.name == alias)).first()
    percent = last.rollout_percent if row is None else row.rollout_percent
    return _move(session, model, alias, row, target, percent, actor=actor, reason=reason)


def alias_at(session: Session, model_name: str, alias: str, when: datetime) -> AliasEventInfo:
    """The move that defined ``alias`` at time ``when`` (its ``to_version`` is the answer).

    :class:`NotFoundError` when the alias did not exist at that time.
    """
    if when.tzinfo is None:
        raise InvalidQueryError("the time must carry a time zone (e.g. 2025-01-31T12:00:00Z)")
    model = get_model(session, model_name)
    event = session.exec(
        select(AliasEvent)
        .where(
            AliasEvent.model_id == model.id,
            AliasEvent.alias == alias,
            col(AliasEvent.at) <= when,
        )
        .order_by(col(AliasEvent.at).desc(), col(AliasEvent.id).desc())
        .limit(1)
    ).first()
    if event is None or event.to_version_id is None:
        raise NotFoundError(
            f"alias {alias!r} of {model.name!r} did not exist at {when.isoformat()}"
        )
    return _events_info(session, model, [event])[0]


def alias_history(
    session: Session,
    model_name: str,
    alias: str | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
) -> Page[AliasEventInfo]:
    """Every move of ``alias`` (or of all the model's aliases), newest first."""
    model = get_model(session, model_name)
    where = [col(AliasEvent.model_id) == model.id]
    if alias is not None:
        where.append(col(AliasEvent.alias) == alias)
    total = session.exec(select(sa.func.count()).select_from(AliasEvent).where(*where)).one()
    events = session.exec(
        select(AliasEvent)
        .where(*where)
        .order_by(col(AliasEvent.at).desc(), col(AliasEvent.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return Page[AliasEventInfo](
        items=_events_info(session, model, events), total=total, limit=limit, offset=offset
    )


def list_aliases(session: Session, model_name: str) -> list[AliasInfo]:
    model = get_model(session, model_name)
    rows = session.exec(
        select(Alias, ModelVersion.number)
        .join(ModelVersion, col(ModelVersion.id) == col(Alias.version_id))
        .where(Alias.model_id == model.id)
        .order_by(col(Alias.name))
    ).all()
    return [_info(model, row, number) for row, number in rows]


def alias_info(session: Session, row: Alias) -> AliasInfo:
    model = session.get(Model, row.model_id)
    version = session.get(ModelVersion, row.version_id)
    assert model is not None and version is not None
    return _info(model, row, version.number)


def _info(model: Model, row: Alias, number: int) -> AliasInfo:
    return AliasInfo(
        model=model.name,
        alias=row.name,
        version=number,
        rollout_percent=row.rollout_percent,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def _events_info(
    session: Session, model: Model, events: Sequence[AliasEvent]
) -> list[AliasEventInfo]:
    ids = {i for e in events for i in (e.from_version_id, e.to_version_id) if i is not None}
    numbers: dict[int, int] = {}
    if ids:
        for vid, number in session.exec(
            select(ModelVersion.id, ModelVersion.number).where(col(ModelVersion.id).in_(ids))
        ):
            numbers[int(vid or 0)] = number
    return [
        AliasEventInfo(
            id=e.id or 0,
            model=model.name,
            alias=e.alias,
            from_version=numbers.get(e.from_version_id) if e.from_version_id else None,
            to_version=numbers.get(e.to_version_id) if e.to_version_id else None,
            rollout_percent=e.rollout_percent,
            at=e.at,
            actor=e.actor,
            reason=e.reason,
        )
        for e in events
    ]
