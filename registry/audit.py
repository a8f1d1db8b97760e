"""The audit trail: who changed what, when, why, with the state before and after.

:func:`record` adds one :class:`~registry.models.AuditRecord` to the caller's session; the caller
commits, so an action that fails (and rolls back) leaves no record, and one that commits leaves
exactly one per call. The trail is append-only and tamper-evident: each record carries the hash of
the one before it and its own hash over its content (:func:`record_hash`), and
:func:`verify` walks the chain and names every record that was altered, removed or inserted
(both defined in :mod:`registry.audit_chain` and exported here).

Writers are serialised on the chain head (:class:`~registry.models.AuditHead`, one row): the first
statement of :func:`record` is an ``UPDATE`` of that row, which takes PostgreSQL's row lock (held
until the writer's transaction ends) and SQLite's database write lock, so the sequence number and
previous hash it then reads are the newest committed ones (PostgreSQL re-reads a row it waited
for; the head row, when missing, is inserted with ``ON CONFLICT DO NOTHING``, so writers that
race to create it wait for the first and then lock the row it inserted). ``seq`` is unique
besides, so no two records can ever claim the same place in the chain. A writer that must read
state and then write a record about it without another writer slipping in between (the signing
key's registration, :func:`registry.signing.ensure_registered`) takes the same lock first with
:func:`lock_chain`.

Actions are dotted names (:data:`ACTIONS` lists the ones the registry and server write). The actor
is a name (``kind:name`` of :class:`server.security.Caller`, a device's or a key's name), never a
secret.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from registry.audit_chain import AuditProblem, VerifyReport, record_hash, verify
from registry.errors import InvalidQueryError
from registry.models.audit import AUDIT_HEAD_ID, GENESIS_HASH, AuditHead, AuditRecord
from registry.models.columns import utcnow
from registry.models.version import VersionStatus

__all__ = [
    "ACTIONS",
    "SYSTEM_ACTOR",
    "AuditProblem",
    "AuditQuery",
    "VerifyReport",
    "list_records",
    "lock_chain",
    "record",
    "record_hash",
    "request_scope",
    "status_action",
    "verify",
]

#: The actor of changes made by the registry's own code, with no caller behind them.
SYSTEM_ACTOR = "system:registry"

#: The actions written by the registry, the server and the rollout controller.
ACTIONS = (
    "model.create",
    "model.update",
    "version.publish",
    "version.archive",
    "version.restore",
    "version.status",
    "version.damage",
    "alias.move",
    "alias.delete",
    "rollout.start",
    "rollout.step",
    "rollout.approve",
    "rollout.abort",
    "rollout.rollback",
    "rollout.promote",
    "device.enrol",
    "device.update",
    "device.revoke",
    "key.create",
    "key.rotate",
    "run.start",
    "run.end",
    "settings.change",
    "card.limitations",
)

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "edgefleet_audit_request_id", default=None
)


@contextmanager
def request_scope(request_id: str | None) -> Iterator[None]:
    """Within this block, records written without a ``request_id`` carry ``request_id``."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def status_action(before: VersionStatus, after: VersionStatus) -> str:
    """The audit action of a version status change from ``before`` to ``after`` (the integrity
    checks' DAMAGED mark is ``version.damage``; their "intact again" is ``version.status``)."""
    if after == VersionStatus.DAMAGED:
        return "version.damage"
    if after == VersionStatus.ARCHIVED:
        return "version.archive"
    if before == VersionStatus.ARCHIVED and after == VersionStatus.READY:
        return "version.restore"
    return "version.status"


_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_ACTOR = 200
_MAX_TARGET = 300
_MAX_REASON = 1000


def _plain(value: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """``value`` as it reads back from a JSON column (so the stored hash recomputes exactly)."""
    if value is None:
        return None
    try:
        out = json.loads(json.dumps(value, sort_keys=True, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise InvalidQueryError(f"audit {name} is not JSON-serialisable: {exc}") from exc
    if not isinstance(out, dict):
        raise InvalidQueryError(f"audit {name} must be an object")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value") and isinstance(value.value, str | int):  # enums
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _check(actor: str, action: str, target: str, reason: str | None) -> None:
    if not _ACTION.match(action) or len(action) > 64:
        raise InvalidQueryError(f"audit action {action!r} is not a dotted name like 'alias.move'")
    if not actor or len(actor) > _MAX_ACTOR:
        raise InvalidQueryError(f"audit actor must be 1–{_MAX_ACTOR} characters")
    if not target or len(target) > _MAX_TARGET:
        raise InvalidQueryError(f"audit target must be 1–{_MAX_TARGET} characters")
    if reason is not None and len(reason) > _MAX_REASON:
        raise InvalidQueryError(f"audit reason is longer than {_MAX_REASON} characters")


def _lock_head(session: Session) -> tuple[int, str]:
    """Lock the chain head (creating it when missing); its newest ``(seq, hash)``."""
    table = AuditHead.__table__  # type: ignore[attr-defined]
    bump = (
        sa.update(table)
        .where(table.c.id == AUDIT_HEAD_ID)
        .values(seq=table.c.seq)
        .returning(table.c.seq, table.c.hash)
    )
    row = session.execute(bump).first()
    if row is None:
        _create_head(session)
        row = session.execute(bump).one()
    return int(row.seq), str(row.hash)


def _create_head(session: Session) -> None:
    """Insert the head row (from the newest record, if records exist without one)."""
    table = AuditHead.__table__  # type: ignore[attr-defined]
    last = session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(1)).first()
    values = {
        "id": AUDIT_HEAD_ID,
        "seq": last.seq if last else 0,
        "hash": last.hash if last else GENESIS_HASH,
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sa.insert(table).values(**values))


def lock_chain(session: Session) -> None:
    """Take the chain's write lock for the rest of ``session``'s transaction.

    Every other writer of the trail (every :func:`record`, in any process) waits until this
    transaction ends; on PostgreSQL (read committed) the statements after it see what the writers
    before it committed. Call it before reading the state an audited change depends on.
    """
    _lock_head(session)


_RECORDS = AuditRecord.__table__  # type: ignore[attr-defined]
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_INSERT = sa.insert(_RECORDS).returning(_RECORDS.c.id)
_ADVANCE = (
    sa.update(_HEAD)
    .where(_HEAD.c.id == AUDIT_HEAD_ID)
    .values(seq=sa.bindparam("head_seq"), hash=sa.bindparam("head_hash"))
)


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    request_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> AuditRecord:
    """Write one audit record in ``session``'s transaction and advance the chain head; the
    caller commits (or rolls back, and the record is gone with its action). Returns the record
    as written (not attached to the session).

    Raises :class:`~registry.errors.InvalidQueryError` for a malformed action, an empty or
    over-long actor or target, or a ``before``/``after`` that is not a JSON object.
    """
    _check(actor, action, target, reason)
    before_plain, after_plain = _plain(before, "before"), _plain(after, "after")
    last_seq, last_hash = _lock_head(session)
    values: dict[str, Any] = {
        "seq": last_seq + 1,
        "at": utcnow(),
        "actor": actor,
        "action": action,
        "target": target,
        "request_id": request_id if request_id is not None else _REQUEST_ID.get(),
        "before": before_plain,
        "after": after_plain,
        "reason": reason,
        "prev_hash": last_hash,
    }
    values["hash"] = record_hash(**values)
    new_id = session.execute(_INSERT, values).scalar()
    session.execute(_ADVANCE, {"head_seq": values["seq"], "head_hash": values["hash"]})
    return AuditRecord(id=new_id, **values)


# --- queries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditQuery:
    """Filters of :func:`list_records`; ``after_seq`` pages forwards (records with a larger seq)."""

    action: str | None = None
    actor: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_seq: int | None = None
    limit: int = 100
    newest_first: bool = False


def list_records(session: Session, query: AuditQuery | None = None) -> list[AuditRecord]:
    """Records matching ``query`` in chain order (or newest first), at most ``query.limit``.

    ``action`` ending in ``.*`` matches a family (``rollout.*``); ``target`` ending in ``*``
    matches a prefix (``digits*``).
    """
    q = query or AuditQuery()
    if not 1 <= q.limit <= 10_000:
        raise InvalidQueryError("limit must be between 1 and 10000")
    stmt = select(AuditRecord)
    if q.action:
        if q.action.endswith(".*"):
            stmt = stmt.where(col(AuditRecord.action).startswith(q.action[:-1], autoescape=True))
        else:
            stmt = stmt.where(AuditRecord.action == q.action)
    if q.actor:
        stmt = stmt.where(AuditRecord.actor == q.actor)
    if q.target:
        if q.target.endswith("*"):
            stmt = stmt.where(col(AuditRecord.target).startswith(q.target[:-1], autoescape=True))
        else:
            stmt = stmt.where(AuditRecord.target == q.target)
    if q.since is not None:
        stmt = stmt.where(AuditRecord.at >= q.since)
    if q.until is not None:
        stmt = stmt.where(AuditRecord.at < q.until)
    if q.after_seq is not None:
        seq = col(AuditRecord.seq)
        stmt = stmt.where(seq < q.after_seq if q.newest_first else seq > q.after_seq)
    order = col(AuditRecord.seq).desc() if q.newest_first else col(AuditRecord.seq)
    return list(session.exec(stmt.order_by(order).limit(q.limit)))
