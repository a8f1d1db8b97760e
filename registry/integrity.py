"""Artifacts verified at rest: checking a version, marking it DAMAGED, scrubbing the store.

A version is *intact* when each of its three blobs exists, has its recorded size and hashes to
its recorded sha256, its manifest blob parses and describes its plan, and its signature verifies
against the registry's recorded public keys (an unsigned version is reported, not damaged).
Anything else marks it DAMAGED (:func:`mark_damaged`): logged as an error, visible in the
registry (status and ``status_reason``) and in readiness (:func:`damaged_versions`), never
served, downloaded or assigned.

:func:`scrub` checks every version (and every blob no version references); ``edgefleet server
scrub`` runs it once and the server runs it periodically (``scrub_interval_s``). A DAMAGED
version found intact again (its blobs restored) becomes READY.

Both changes are audited (:mod:`registry.audit`): ``version.damage`` with the reason, and
``version.status`` for "integrity restored", as the caller's ``actor`` (default
:data:`INTEGRITY_ACTOR`). :func:`scrub` writes its records after all the hashing, just before its
caller commits, so it holds the audit chain's lock only for a moment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.errors import PlanError
from edgefleet.plan import PlanManifest
from registry import audit
from registry.db import session_scope
from registry.models import Model, ModelVersion, VersionStatus, utcnow
from registry.signing import public_keys, verify_version_signature
from registry.store import ArtifactStore

__all__ = [
    "INTEGRITY_ACTOR",
    "ScrubReport",
    "check_version",
    "damaged_versions",
    "mark_damaged",
    "report_damage",
    "scrub",
]

log = logging.getLogger(__name__)
_CHECKED = (VersionStatus.READY, VersionStatus.ARCHIVED, VersionStatus.DAMAGED)
#: The audit actor of an integrity check with no other actor named (a read path that found damage).
INTEGRITY_ACTOR = "system:integrity"


@dataclass
class ScrubReport:
    """What one scrub found."""

    checked: int = 0
    damaged: list[tuple[str, int, str]] = field(default_factory=list)
    restored: list[tuple[str, int]] = field(default_factory=list)
    unsigned: list[tuple[str, int]] = field(default_factory=list)
    blobs_checked: int = 0
    corrupt_blobs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.corrupt_blobs


def check_version(store: ArtifactStore, version: ModelVersion, model_name: str,
                  keys: dict[str, str], *, cached: bool = False) -> list[str]:
    """Every problem of ``version``'s artifacts and signature (empty when intact)."""
    problems = []
    for kind, sha, size in (("plan", version.plan_sha256, version.plan_size),
                            ("weights", version.weights_sha256, version.weights_size),
                            ("manifest", version.manifest_sha256, version.manifest_size)):
        problem = store.problem(sha, size, cached=cached)
        if problem is not None:
            problems.append(f"{kind} {sha[:12]}…: {problem}")
    if not problems:
        try:
            stored = PlanManifest.from_json(store.read_bytes(version.manifest_sha256))
            if stored.plan_sha256 != version.plan_sha256:
                problems.append("manifest describes another plan")
        except PlanError as exc:
            problems.append(f"manifest: {exc}")
    if version.signature is not None:
        why = verify_version_signature(version, model_name, keys)
        if why is not None:
            problems.append(why)
    return problems


def mark_damaged(session: Session, version: ModelVersion, model_name: str, reason: str, *,
                 actor: str = INTEGRITY_ACTOR) -> bool:
    """Mark ``version`` DAMAGED (whatever aliases point at it; audited as ``actor``); ``True``
    if it was not yet."""
    before = _set_damaged(version, model_name, reason)
    if before is None:
        return False
    session.add(version)
    session.flush()
    _audit_status(session, _StatusChange(version, model_name, before, version.status_reason),
                  actor)
    return True


@dataclass(frozen=True)
class _StatusChange:
    version: ModelVersion
    model_name: str
    before: VersionStatus
    reason: str | None


def _set_damaged(version: ModelVersion, model_name: str, reason: str) -> VersionStatus | None:
    """Set the DAMAGED mark in place; the status it had, or ``None`` when already DAMAGED."""
    if version.status == VersionStatus.DAMAGED:
        return None
    log.error("version %d of %r is DAMAGED and will not be served: %s",
              version.number, model_name, reason)
    before = version.status
    version.status = VersionStatus.DAMAGED
    version.status_reason = f"integrity: {reason}"[:1000]
    version.status_changed_at = version.damaged_at = utcnow()
    return before


def _audit_status(session: Session, change: _StatusChange, actor: str) -> None:
    version = change.version
    audit.record(session, actor=actor, action=audit.status_action(change.before, version.status),
                 target=f"{change.model_name}/{version.number}",
                 before={"status": change.before.value}, after={"status": version.status.value},
                 reason=change.reason)


def report_damage(engine: Engine, model_name: str, number: int, reason: str, *,
                  actor: str = INTEGRITY_ACTOR) -> None:
    """Mark a version DAMAGED in its own write transaction (from a read path that found it)."""
    with session_scope(engine, write=True) as session:
        row = session.exec(
            select(ModelVersion).join(Model, col(Model.id) == col(ModelVersion.model_id))
            .where(col(Model.name) == model_name, col(ModelVersion.number) == number)
        ).first()
        if row is not None:
            mark_damaged(session, row, model_name, reason, actor=actor)


def damaged_versions(session: Session) -> list[tuple[str, int, str]]:
    """``(model, version, reason)`` of every DAMAGED version."""
    rows = session.exec(
        select(Model.name, ModelVersion.number, ModelVersion.status_reason)
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
        .where(col(ModelVersion.status) == VersionStatus.DAMAGED)
        .order_by(col(Model.name), col(ModelVersion.number))
    ).all()
    return [(str(m), int(n), str(r)) for m, n, r in rows]


def scrub(session: Session, store: ArtifactStore, *, blobs: bool = True,
          actor: str = INTEGRITY_ACTOR) -> ScrubReport:
    """Re-hash every version's artifacts (and, with ``blobs``, every blob in the store); each
    status change is audited as ``actor``."""
    report = ScrubReport()
    changes, referenced = _scrub_versions(session, store, report)
    if blobs:
        for sha in store.digests():
            if sha in referenced:
                continue
            report.blobs_checked += 1
            if store.problem(sha) is not None:
                report.corrupt_blobs.append(sha)
                log.error("unreferenced blob %s is corrupt", sha)
    report.blobs_checked += len(referenced)
    for change in changes:
        _audit_status(session, change, actor)
    return report


def _scrub_versions(session: Session, store: ArtifactStore, report: ScrubReport
                    ) -> tuple[list[_StatusChange], set[str]]:
    """Check every version (filling ``report``); the status changes made (for the audit) and
    the digests of the blobs the versions reference."""
    keys = public_keys(session)
    changes: list[_StatusChange] = []
    referenced: set[str] = set()
    rows = session.exec(
        select(ModelVersion, Model.name)
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
        .where(col(ModelVersion.status).in_(_CHECKED))
        .order_by(col(ModelVersion.id))
    ).all()
    for version, name in rows:
        report.checked += 1
        referenced.update((version.plan_sha256, version.weights_sha256, version.manifest_sha256))
        problems = check_version(store, version, name, keys)
        if version.signature is None:
            report.unsigned.append((name, version.number))
        if problems:
            reason = "; ".join(problems)
            before = _set_damaged(version, name, reason)
            if before is not None:
                changes.append(_StatusChange(version, name, before, version.status_reason))
            session.add(version)
            report.damaged.append((name, version.number, reason))
            continue
        version.verified_at = utcnow()
        if version.status == VersionStatus.DAMAGED:
            log.warning("version %d of %r is intact again: READY", version.number, name)
            version.status, version.status_reason = VersionStatus.READY, "integrity restored"
            version.status_changed_at = utcnow()
            changes.append(_StatusChange(version, name, VersionStatus.DAMAGED,
                                         version.status_reason))
            report.restored.append((name, version.number))
        session.add(version)
    session.flush()
    return changes, referenced
