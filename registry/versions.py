"""Model versions: look them up, list them, change their status, describe them.

Publishing a new version (upload verification) lives in :mod:`registry.publish`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from edgefleet.drift import DriftSummary, ReferenceProfile, refreshed_reference
from edgefleet.errors import SummaryError
from edgefleet.plan import PlanManifest
from edgefleet.wire import ArtifactInfo, Page, VersionInfo, VersionLineage, artifact_url
from registry import audit
from registry.catalog import get_model
from registry.errors import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    VersionNotReadyError,
)
from registry.models import (
    TRANSITIONS,
    Alias,
    Model,
    ModelVersion,
    VersionStatus,
    VersionStatusUpdate,
    utcnow,
)
from registry.signing import signature_of

__all__ = [
    "LIGHT",
    "change_status",
    "get_version",
    "list_versions",
    "manifest_of",
    "reference_of",
    "require_ready",
    "version_info",
    "versions_info",
]


def get_version(session: Session, model: Model | str, number: int) -> ModelVersion:
    """Version ``number`` of ``model``; :class:`NotFoundError` when there is none."""
    m = get_model(session, model) if isinstance(model, str) else model
    row = session.exec(
        select(ModelVersion)
        .options(*LIGHT)
        .where(ModelVersion.model_id == m.id, ModelVersion.number == number)
    ).first()
    if row is None:
        raise NotFoundError(f"model {m.name!r} has no version {number}")
    return row


#: Loader options that leave the large JSON columns (the manifest with its reference profile)
#: unloaded until they are read.
LIGHT = (defer(cast(Any, ModelVersion.manifest)), defer(cast(Any, ModelVersion.drift_summary)))


def require_ready(version: ModelVersion, model_name: str) -> ModelVersion:
    """``version`` itself, or :class:`VersionNotReadyError` when its status is not READY."""
    if version.status != VersionStatus.READY:
        raise VersionNotReadyError(
            f"version {version.number} of {model_name!r} is {version.status.value}, not READY"
        )
    return version


def manifest_of(version: ModelVersion) -> PlanManifest:
    """The plan manifest a version was published with."""
    return PlanManifest.model_validate(version.manifest)


_REFERENCES: OrderedDict[str, ReferenceProfile | None] = OrderedDict()
_REFERENCES_LOCK = threading.Lock()
_REFERENCES_SIZE = 64


def reference_of(version: ModelVersion) -> ReferenceProfile | None:
    """The drift reference a version's telemetry is measured against: its own.

    A version whose lineage carries a merged training summary (a federated run's, see
    :mod:`aggregation.publishing`) made against its plan's reference gets that reference
    refreshed with the summary (:func:`edgefleet.drift.baseline.refreshed_reference`: same bins
    and fingerprint, the training clients' statistics), so fleet drift is measured against
    the data the version was trained on; any other version (no summary, one without rows, one
    that does not parse or does not fit the plan's bins) gets its plan's reference. Cached per
    version (id, manifest digest and creation time: a version's manifest and lineage never
    change).
    """
    key = f"{version.id}:{version.manifest_sha256}:{version.created_at.isoformat()}"
    with _REFERENCES_LOCK:
        if key in _REFERENCES:
            _REFERENCES.move_to_end(key)
            return _REFERENCES[key]
    reference = _own_reference(manifest_of(version).reference, version.drift_summary)
    with _REFERENCES_LOCK:
        _REFERENCES[key] = reference
        while len(_REFERENCES) > _REFERENCES_SIZE:
            _REFERENCES.popitem(last=False)
    return reference


def _own_reference(
    plan: ReferenceProfile | None, summary: dict[str, Any] | None
) -> ReferenceProfile | None:
    """``plan`` refreshed with ``summary`` when that is a usable training summary, else ``plan``."""
    if plan is None or not summary:
        return plan
    try:
        parsed = DriftSummary.parse(summary)
        if parsed.n <= 0:
            return plan
        return refreshed_reference(plan, parsed)
    except (SummaryError, ValueError):  # not a summary, or not one of this plan's bins
        return plan


def list_versions(
    session: Session,
    model: str,
    *,
    status: VersionStatus | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[VersionInfo]:
    """A model's versions, newest first."""
    m = get_model(session, model)
    where = [col(ModelVersion.model_id) == m.id]
    if status is not None:
        where.append(col(ModelVersion.status) == status)
    total = session.exec(select(sa.func.count()).select_from(ModelVersion).where(*where)).one()
    rows = session.exec(
        select(ModelVersion)
        .where(*where)
        .order_by(col(ModelVersion.number).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return Page[VersionInfo](
        items=versions_info(session, rows), total=total, limit=limit, offset=offset
    )


def change_status(
    session: Session,
    model: str,
    number: int,
    update: VersionStatusUpdate,
    *,
    actor: str = audit.SYSTEM_ACTOR,
) -> ModelVersion:
    """Move a version along its life cycle (see :data:`registry.models.TRANSITIONS`).

    Archiving a version an alias still points at is refused: move the alias first. A change is
    audited (``version.archive``, ``version.restore`` or ``version.status``) as ``actor``.
    """
    m = get_model(session, model)
    version = get_version(session, m, number)
    if update.status == version.status:
        return version
    if update.status not in TRANSITIONS[version.status]:
        raise InvalidTransitionError(
            f"version {number} of {model!r} cannot go from {version.status.value} "
            f"to {update.status.value}"
        )
    if update.status != VersionStatus.READY:
        held = session.exec(select(Alias.name).where(Alias.version_id == version.id)).all()
        if held:
            raise ConflictError(
                f"version {number} of {model!r} is still {', '.join(sorted(held))}; "
                "move the alias first"
            )
    before = version.status
    version.status = update.status
    version.status_reason = update.reason
    version.status_changed_at = utcnow()
    session.add(version)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=audit.status_action(before, update.status),
        target=f"{m.name}/{number}",
        before={"status": before.value},
        after={"status": update.status.value},
        reason=update.reason or None,
    )
    return version


def version_info(session: Session, version: ModelVersion) -> VersionInfo:
    """The API view of one version."""
    return versions_info(session, [version])[0]


def versions_info(session: Session, versions: Sequence[ModelVersion]) -> list[VersionInfo]:
    """The API view of several versions, with three queries however many there are."""
    if not versions:
        return []
    ids = [v.id for v in versions]
    model_ids = {v.model_id for v in versions}
    names = dict(
        session.exec(select(Model.id, Model.name).where(col(Model.id).in_(model_ids))).all()
    )
    aliases: dict[int, list[str]] = defaultdict(list)
    for version_id, alias in session.exec(
        select(Alias.version_id, Alias.name)
        .where(col(Alias.version_id).in_(ids))
        .order_by(col(Alias.name))
    ):
        aliases[version_id].append(alias)
    parent_ids = {v.parent_version_id for v in versions if v.parent_version_id is not None}
    parents: dict[int, int] = {}
    if parent_ids:
        for pid, number in session.exec(
            select(ModelVersion.id, ModelVersion.number).where(col(ModelVersion.id).in_(parent_ids))
        ):
            parents[int(pid or 0)] = number
    out = []
    for v in versions:
        name = names[v.model_id]
        out.append(
            VersionInfo(
                model=name,
                version=v.number,
                status=v.status.value,
                plan=ArtifactInfo(
                    sha256=v.plan_sha256,
                    size=v.plan_size,
                    url=artifact_url(name, v.number, "plan"),
                ),
                weights=ArtifactInfo(
                    sha256=v.weights_sha256,
                    size=v.weights_size,
                    url=artifact_url(name, v.number, "weights"),
                ),
                manifest=ArtifactInfo(
                    sha256=v.manifest_sha256,
                    size=v.manifest_size,
                    url=artifact_url(name, v.number, "manifest"),
                ),
                description=v.description,
                metrics=dict(v.metrics),
                hyperparameters=dict(v.hyperparameters),
                lineage=VersionLineage(
                    parent_version=parents.get(v.parent_version_id or -1),
                    federated_run=v.federated_run,
                    federated_round=v.federated_round,
                    num_clients=v.num_clients,
                    strategy=v.strategy,
                    drift_summary=v.drift_summary,
                    training_data_ref=v.training_data_ref,
                ),
                aliases=aliases.get(v.id or -1, []),
                created_at=v.created_at,
                created_by=v.created_by,
                status_reason=v.status_reason,
                signature=signature_of(session, v),
            )
        )
    return out
