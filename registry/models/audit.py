"""The audit trail: one append-only, hash-chained row per state-changing action.

Family: the tables :class:`AuditRecord` (the records) and :class:`AuditHead` (one row, id 1: the
sequence number and hash of the newest record, the lock that serialises writers). The wire
form of a record is :class:`edgefleet.audit.AuditRecordInfo`.

Record ``seq`` ``n`` carries ``prev_hash`` = the ``hash`` of record ``n − 1`` (the genesis hash
:data:`GENESIS_HASH` for record 1) and its own ``hash`` over its fields and ``prev_hash`` (see
:func:`registry.audit.record_hash`). ``seq`` is unique, so two writers can never fork the chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = [
    "AUDIT_HEAD_ID",
    "GENESIS_HASH",
    "AuditHead",
    "AuditRecord",
]

#: ``prev_hash`` of the first record: 64 zeros.
GENESIS_HASH = "0" * 64
#: The id of the single :class:`AuditHead` row.
AUDIT_HEAD_ID = 1

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class AuditRecord(SQLModel, table=True):
    """Who did what to which target, when, why, with the state before and after."""

    __tablename__ = "audit_record"
    __table_args__ = (
        sa.UniqueConstraint("seq"),
        sa.Index("ix_audit_record_action_at", "action", "at"),
        sa.Index("ix_audit_record_actor_at", "actor", "at"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(_BIG_ID, primary_key=True, autoincrement=True)
    )
    seq: int = Field(sa_column=sa.Column(_BIG_ID, nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    target: str = Field(max_length=300, index=True)
    request_id: str | None = Field(default=None, max_length=128)
    before: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    after: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    reason: str | None = Field(default=None, max_length=1000)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's newest record (``seq`` 0 and the genesis hash while the trail is empty)."""

    __tablename__ = "audit_head"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(sa_column=sa.Column(_BIG_ID, nullable=False))
    hash: str = Field(max_length=64)

