"""Devices: enrolled edge agents, their labels and hardware, and the versions they run.

Family: requests :class:`edgefleet.wire.EnrollRequest` (the device) and :class:`DeviceUpdate`
(the operator), table :class:`Device`, response :class:`DevicePublic`.

A device's bearer token is never stored: only its sha256 (``token_hash``). Tokens carry 256 bits
of randomness, so a fast hash is as good as a slow one here and keeps every request cheap.
Revoking a device clears the hash; its telemetry stays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from edgefleet.bounds import Labels
from edgefleet.wire import NAME_PATTERN
from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = ["Device", "DevicePublic", "DeviceUpdate"]


class DeviceUpdate(SQLModel):
    """What the operator may change about a device; absent fields stay as they are."""

    labels: Labels | None = None
    model: str | None = Field(default=None, schema_extra={"pattern": NAME_PATTERN})


class Device(SQLModel, table=True):
    __tablename__ = "device"

    id: str = Field(primary_key=True, max_length=128)
    token_hash: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(64), unique=True, nullable=True)
    )
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSONType)
    hardware: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    model_id: int | None = Field(default=None, foreign_key="model.id", index=True)
    assigned_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    running_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    enrolled_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    token_issued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DevicePublic(SQLModel):
    """A device as the API reports it (never its token)."""

    id: str
    labels: dict[str, str]
    hardware: dict[str, Any]
    model: str | None = None
    assigned_version: int | None = Field(
        default=None, description="the version the last assignment poll handed out"
    )
    running_version: int | None = Field(
        default=None, description="the version the device last reported running"
    )
    enrolled_at: datetime
    last_seen_at: datetime | None = None
    revoked: bool = False
