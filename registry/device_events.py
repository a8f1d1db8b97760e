"""Device events that arrive in telemetry reports: checked, stored with their report, queried.

A report's events (:class:`edgefleet.wire.DeviceEvent`) must name the report's model and
versions of it that exist (:func:`check_events`, which raises
:class:`~registry.errors.InvalidQueryError`, so the whole report is refused with 422 and nothing
is stored); :func:`event_rows` builds their rows once the report has its id, in the report's
transaction, so an event is stored exactly as often as its report: once. :func:`list_events`
pages through them for the operator; :func:`event_counts` sums them by kind for a version in a
time window (the rollout guards' evidence, :mod:`registry.version_evidence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.wire import DeviceEvent, DeviceEventKind, Page, ShadowStats
from registry.catalog import get_model
from registry.errors import InvalidQueryError
from registry.models import DeviceEventPublic, DeviceEventRecord, Model, ModelVersion

__all__ = [
    "EVENT_KINDS", "check_events", "check_shadow", "event_counts", "event_rows", "list_events",
]

#: Every kind of device event, in the order reports show them.
EVENT_KINDS: tuple[DeviceEventKind, ...] = (
    "switch", "smoke_failed", "refused", "crash", "rollback", "prefetched")
MAX_PAGE = 1000


def check_events(session: Session, model: Model, events: Sequence[DeviceEvent]) -> None:
    """Refuse events about another model or about versions the model does not have."""
    if not events:
        return
    for i, e in enumerate(events):
        if e.model != model.name:
            raise InvalidQueryError(
                f"events[{i}] is about model {e.model!r}, the report about {model.name!r}")
    wanted = {n for e in events for n in (e.version, e.from_version, e.to_version)
              if n is not None}
    known = set(session.exec(
        select(ModelVersion.number).where(col(ModelVersion.model_id) == model.id,
                                          col(ModelVersion.number).in_(sorted(wanted)))
    ).all())
    missing = sorted(wanted - known)
    if missing:
        raise InvalidQueryError(
            f"events name versions {missing} of {model.name!r}, which do not exist")


def check_shadow(session: Session, model: Model, shadow: ShadowStats) -> None:
    """Refuse shadow figures about a version the model does not have, or more agreements than
    comparisons."""
    if shadow.agree > shadow.n:
        raise InvalidQueryError(f"shadow.agree ({shadow.agree}) exceeds shadow.n ({shadow.n})")
    found = session.exec(select(ModelVersion.id).where(
        col(ModelVersion.model_id) == model.id, col(ModelVersion.number) == shadow.version)
    ).first()
    if found is None:
        raise InvalidQueryError(
            f"shadow names version {shadow.version} of {model.name!r}, which does not exist")


def event_rows(report_id: int, device_id: str, model_id: int,
               events: Sequence[DeviceEvent]) -> list[DeviceEventRecord]:
    """The rows of a stored report's events."""
    return [
        DeviceEventRecord(report_id=report_id, device_id=device_id, model_id=model_id,
                          version=e.version, kind=e.kind, at=e.at, from_version=e.from_version,
                          to_version=e.to_version, count=e.count, detail=e.detail)
        for e in events
    ]


def _filters(session: Session, model: str | None, version: int | None, device: str | None,
             kind: str | None, since: datetime | None, until: datetime | None
             ) -> list[sa.ColumnElement[bool]]:
    if version is not None and model is None:
        raise InvalidQueryError("filtering by version needs the model")
    where: list[sa.ColumnElement[bool]] = []
    if model is not None:
        where.append(col(DeviceEventRecord.model_id) == get_model(session, model).id)
    if version is not None:
        where.append(col(DeviceEventRecord.version) == version)
    if device is not None:
        where.append(col(DeviceEventRecord.device_id) == device)
    if kind is not None:
        where.append(col(DeviceEventRecord.kind) == kind)
    if since is not None:
        where.append(col(DeviceEventRecord.at) >= since)
    if until is not None:
        where.append(col(DeviceEventRecord.at) < until)
    return where


def list_events(
    session: Session, *, model: str | None = None, version: int | None = None,
    device: str | None = None, kind: str | None = None, since: datetime | None = None,
    until: datetime | None = None, limit: int = 100, offset: int = 0,
) -> Page[DeviceEventPublic]:
    """Stored events, newest first (``since`` included, ``until`` excluded, by event time)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_PAGE}")
    where = _filters(session, model, version, device, kind, since, until)
    total = session.exec(
        select(sa.func.count()).select_from(DeviceEventRecord).where(*where)).one()
    rows = session.exec(
        select(DeviceEventRecord, Model.name)
        .join(Model, col(Model.id) == col(DeviceEventRecord.model_id))
        .where(*where)
        .order_by(col(DeviceEventRecord.at).desc(), col(DeviceEventRecord.id).desc())
        .limit(limit).offset(offset)
    ).all()
    items = [DeviceEventPublic.model_validate(r, update={"id": r.id or 0, "model": name})
             for r, name in rows]
    return Page[DeviceEventPublic](items=items, total=total, limit=limit, offset=offset)


def event_counts(session: Session, model_id: int, version: int, since: datetime,
                 until: datetime | None = None, device_ids: Sequence[str] | None = None
                 ) -> dict[str, int]:
    """Events about ``version`` in ``[since, until)`` by kind (summing ``count``; every kind
    present, 0 when none)."""
    e = DeviceEventRecord
    where = [col(e.model_id) == model_id, col(e.version) == version, col(e.at) >= since]
    if until is not None:
        where.append(col(e.at) < until)
    if device_ids is not None:
        where.append(col(e.device_id).in_(list(device_ids)))
    out: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
    for kind, n in session.exec(
        select(e.kind, sa.func.sum(e.count)).where(*where).group_by(e.kind)
    ).all():
        out[kind] = int(n or 0)
    return out
