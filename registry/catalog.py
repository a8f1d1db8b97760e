"""Models: register, look up, describe and tag them.

Every function takes an open :class:`~sqlmodel.Session`, flushes what it changed and leaves the
commit to the caller (one request, one transaction). Registering a model is audited as
``model.create``, a change of its task, description or tags as ``model.update``
(:mod:`registry.audit`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry import audit
from registry.errors import AlreadyExistsError, NotFoundError
from registry.models import (
    Alias,
    Model,
    ModelCreate,
    ModelPublic,
    ModelTag,
    ModelUpdate,
    ModelVersion,
    utcnow,
)

__all__ = ["create_model", "get_model", "model_public", "models_public", "update_model"]


def create_model(
    session: Session, data: ModelCreate, *, actor: str = audit.SYSTEM_ACTOR
) -> Model:
    """Register a model (audited as ``actor``); :class:`AlreadyExistsError` when the name is
    taken."""
    if session.exec(select(Model.id).where(Model.name == data.name)).first() is not None:
        raise AlreadyExistsError(f"model {data.name!r} already exists")
    model = Model(name=data.name, task=data.task, description=data.description)
    try:
        with session.begin_nested():
            session.add(model)
            session.flush()
    except IntegrityError as exc:  # a concurrent request won the race
        raise AlreadyExistsError(f"model {data.name!r} already exists") from exc
    assert model.id is not None
    _set_tags(session, model.id, data.tags)
    audit.record(session, actor=actor, action="model.create", target=model.name,
                 after=_audit_state(session, model))
    return model


def get_model(session: Session, name: str, *, for_update: bool = False) -> Model:
    """The model called ``name``; :class:`NotFoundError` when there is none.

    ``for_update`` locks the row until the transaction ends (PostgreSQL), which serialises the
    allocation of version numbers.
    """
    stmt = select(Model).where(Model.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    model = session.exec(stmt).first()
    if model is None:
        raise NotFoundError(f"model {name!r} not found")
    return model


def update_model(
    session: Session, name: str, patch: ModelUpdate, *, actor: str = audit.SYSTEM_ACTOR
) -> Model:
    """Change a model's task, description or tags (audited as ``actor`` when anything changed)."""
    model = get_model(session, name)
    before = _audit_state(session, model)
    if patch.task is not None:
        model.task = patch.task
    if patch.description is not None:
        model.description = patch.description
    if patch.tags is not None:
        assert model.id is not None
        _set_tags(session, model.id, patch.tags)
    model.updated_at = utcnow()
    session.add(model)
    session.flush()
    after = _audit_state(session, model)
    if after != before:
        audit.record(session, actor=actor, action="model.update", target=model.name,
                     before=before, after=after)
    return model


def _audit_state(session: Session, model: Model) -> dict[str, object]:
    """What the audit trail keeps of a model: its task, description and tags."""
    tags = session.exec(
        select(ModelTag.tag).where(col(ModelTag.model_id) == model.id).order_by(col(ModelTag.tag))
    ).all()
    return {"task": model.task, "description": model.description, "tags": list(tags)}


def _set_tags(session: Session, model_id: int, tags: Sequence[str]) -> None:
    session.execute(sa.delete(ModelTag).where(col(ModelTag.model_id) == model_id))
    for tag in sorted(set(tags)):
        session.add(ModelTag(model_id=model_id, tag=tag))
    session.flush()


def model_public(session: Session, model: Model) -> ModelPublic:
    """The API view of one model (tags, aliases, latest version)."""
    return models_public(session, [model])[0]


def models_public(session: Session, models: Sequence[Model]) -> list[ModelPublic]:
    """The API view of several models, with three queries however many there are."""
    ids = [m.id for m in models if m.id is not None]
    tags: dict[int, list[str]] = defaultdict(list)
    aliases: dict[int, dict[str, int]] = defaultdict(dict)
    latest: dict[int, int] = {}
    if ids:
        for model_id, tag in session.exec(
            select(ModelTag.model_id, ModelTag.tag)
            .where(col(ModelTag.model_id).in_(ids))
            .order_by(col(ModelTag.tag))
        ):
            tags[model_id].append(tag)
        for model_id, alias, number in session.exec(
            select(Alias.model_id, Alias.name, ModelVersion.number)
            .join(ModelVersion, col(ModelVersion.id) == col(Alias.version_id))
            .where(col(Alias.model_id).in_(ids))
        ):
            aliases[model_id][alias] = number
        for model_id, number in session.exec(
            select(ModelVersion.model_id, sa.func.max(ModelVersion.number))
            .where(col(ModelVersion.model_id).in_(ids))
            .group_by(col(ModelVersion.model_id))
        ):
            latest[model_id] = number
    out = []
    for m in models:
        mid = m.id or 0
        out.append(
            ModelPublic(
                name=m.name,
                task=m.task,
                description=m.description,
                tags=tags.get(mid, []),
                input_schema=m.input_schema,
                output_schema=m.output_schema,
                aliases=dict(sorted(aliases.get(mid, {}).items())),
                latest_version=latest.get(mid),
                created_at=m.created_at,
                updated_at=m.updated_at,
            )
        )
    return out
