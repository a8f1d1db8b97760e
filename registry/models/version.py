"""Model versions: immutable, content-addressed artifacts plus metrics and lineage.

Family: the request is :class:`edgefleet.wire.VersionPublish` (shared with the aggregation's
registry client), the table is :class:`ModelVersion` (with :class:`VersionMetric` rows for
indexed metric search), the response is :class:`edgefleet.wire.VersionInfo`, and the only update
is a status change (:class:`VersionStatusUpdate`).

Life cycle (see :data:`TRANSITIONS`)::

    PENDING ──▶ READY ◀──▶ ARCHIVED
       └──────▶ FAILED       │
                   READY/ARCHIVED ──▶ DAMAGED ──▶ READY   (integrity checks only)

DAMAGED is set by the integrity checks, never by a client: a stored artifact of the version no
longer hashes to its digest, or its signature does not verify (:mod:`registry.integrity`). A
damaged version is never served, downloaded or assigned; when a later scrub finds every artifact
intact again (an operator restored the blobs) it becomes READY.

Each version carries the registry's Ed25519 signature over its version statement
(:mod:`edgefleet.signature`) and the id of the key that made it (a :class:`SigningKey` row, kept
after the key is rotated so old signatures stay verifiable).

A version becomes READY only after its artifacts were verified and committed to the store; once
READY its artifacts, metrics and lineage never change. :mod:`registry.publish` verifies before it
inserts anything, so uploads are born READY (a refused upload leaves no row at all); PENDING and
FAILED are there for verification that runs after registration (for example a long evaluation
gate), which no current path does.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from edgefleet.bounds import CleanText
from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = [
    "TRANSITIONS",
    "ModelVersion",
    "SigningKey",
    "VersionMetric",
    "VersionStatus",
    "VersionStatusUpdate",
]


class VersionStatus(StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"
    ARCHIVED = "ARCHIVED"
    DAMAGED = "DAMAGED"


#: Status changes a client may ask for (the integrity checks alone set and clear DAMAGED).
TRANSITIONS: dict[VersionStatus, frozenset[VersionStatus]] = {
    VersionStatus.PENDING: frozenset({VersionStatus.READY, VersionStatus.FAILED}),
    VersionStatus.READY: frozenset({VersionStatus.ARCHIVED}),
    VersionStatus.ARCHIVED: frozenset({VersionStatus.READY}),
    VersionStatus.FAILED: frozenset(),
    VersionStatus.DAMAGED: frozenset(),
}


class VersionStatusUpdate(SQLModel):
    """Archive a READY version or bring an archived one back."""

    status: VersionStatus
    reason: CleanText = Field(default="", max_length=1000)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (sa.UniqueConstraint("model_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    number: int = Field(ge=1)
    status: VersionStatus = Field(
        sa_column=sa.Column(
            sa.Enum(
                VersionStatus,
                name="version_status",
                native_enum=False,
                length=16,
                create_constraint=True,
            ),
            nullable=False,
            index=True,
        )
    )
    status_reason: str = Field(default="", max_length=1000)
    status_changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # artifacts (content addresses in the store)
    plan_sha256: str = Field(max_length=64, index=True)
    plan_size: int
    weights_sha256: str = Field(max_length=64)
    weights_size: int
    manifest_sha256: str = Field(max_length=64)
    manifest_size: int
    manifest: dict[str, Any] = Field(sa_type=JSONType)
    # integrity: the registry's signature over the version statement, and the last checks
    signature: str | None = Field(default=None, max_length=128)
    signing_key_id: str | None = Field(
        default=None, max_length=16, foreign_key="signing_key.key_id"
    )
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    damaged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # description, evaluation, training
    description: str = Field(default="", max_length=4000)
    metrics: dict[str, float] = Field(default_factory=dict, sa_type=JSONType)
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    training_data_ref: str | None = Field(default=None, max_length=1024)
    # lineage
    parent_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    federated_run: str | None = Field(default=None, max_length=128, index=True)
    federated_round: int | None = None
    num_clients: int | None = None
    strategy: str | None = Field(default=None, max_length=128)
    drift_summary: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    created_by: str = Field(max_length=128)


class VersionMetric(SQLModel, table=True):
    """One metric of one version, as a row, so thresholds are indexed range queries."""

    __tablename__ = "version_metric"
    __table_args__ = (sa.Index("ix_version_metric_name_value", "name", "value"),)

    version_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("model_version.id", ondelete="CASCADE"), primary_key=True)
    )
    name: str = Field(max_length=64, primary_key=True)
    value: float


class SigningKey(SQLModel, table=True):
    """A public key the registry signs (or signed) versions with; rows are never deleted.

    ``endorsed_by``/``endorsement``: the previous key and its signature over this key's rotation
    statement (:func:`edgefleet.signature.rotation_statement`); ``retired_at`` is set when a
    newer key replaces it (its signatures stay verifiable).
    """

    __tablename__ = "signing_key"

    key_id: str = Field(primary_key=True, max_length=16)
    algorithm: str = Field(default="ed25519", max_length=16)
    public_key: str = Field(max_length=64)
    endorsed_by: str | None = Field(default=None, max_length=16)
    endorsement: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
