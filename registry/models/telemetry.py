"""Telemetry reports: one row per (device, idempotency key), whatever the number of retries.

Family: request :class:`edgefleet.wire.TelemetryReport`, table :class:`TelemetryRecord`,
responses :class:`edgefleet.wire.TelemetryAck` (to the device) and :class:`TelemetryPublic` (to
the operator and to the drift analysis).

The drift summary is stored as the JSON of the device's :class:`edgefleet.drift.DriftSummary`,
next to the device, model, version and window bounds it describes, so merging "by device, model
version and time window" is a query plus a fold. Counters and the local evaluation get their own
columns for cheap aggregates. ``body_sha256`` (of the canonical JSON of the report) tells a retry
(same body) from a reuse of the key for a different report.

The device events a report carries (:class:`edgefleet.wire.DeviceEvent`) are rows of
:class:`DeviceEventRecord`, stored in the report's transaction (so once, as the report is), with
the number of the version they concern (which need not be the report's: a rollback *from* the
candidate arrives in a report *of* the baseline); :class:`DeviceEventPublic` is what the
operator's query returns. A report's shadow figures (:class:`edgefleet.wire.ShadowStats`: a
version run beside the active one) are the ``shadow_*`` columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = ["DeviceEventPublic", "DeviceEventRecord", "TelemetryPublic", "TelemetryRecord"]


class TelemetryRecord(SQLModel, table=True):
    __tablename__ = "telemetry_report"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "idempotency_key"),
        sa.Index(
            "ix_telemetry_report_model_version_window", "model_id", "version_id", "window_end"
        ),
        sa.Index("ix_telemetry_report_device_window", "device_id", "window_end"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", max_length=128)
    idempotency_key: str = Field(max_length=128)
    body_sha256: str = Field(max_length=64)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="model_version.id")
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    inference_local: int = 0
    inference_fallback: int = 0
    inference_errors: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    eval_n: int | None = None
    eval_accuracy: float | None = None
    eval_loss: float | None = None
    dropped_reports: int = 0
    drift: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    shadow_version: int | None = None
    shadow_n: int | None = None
    shadow_agree: int | None = None
    shadow_confidence_delta_sum: float | None = None


class TelemetryPublic(SQLModel):
    """A stored report with the names (not ids) of its device, model and version."""

    id: int
    device_id: str
    model: str
    version: int
    idempotency_key: str
    window_start: datetime
    window_end: datetime
    received_at: datetime
    inference_local: int
    inference_fallback: int
    inference_errors: int
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    eval_n: int | None = None
    eval_accuracy: float | None = None
    eval_loss: float | None = None
    dropped_reports: int = 0
    drift: dict[str, Any] | None = None
    shadow_version: int | None = None
    shadow_n: int | None = None
    shadow_agree: int | None = None
    shadow_confidence_delta_sum: float | None = None


class DeviceEventRecord(SQLModel, table=True):
    """One device event (see the module notes), from the report ``report_id``."""

    __tablename__ = "device_event"
    __table_args__ = (
        sa.Index("ix_device_event_model_version_at", "model_id", "version", "at"),
        sa.Index("ix_device_event_device_at", "device_id", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="telemetry_report.id", index=True)
    device_id: str = Field(foreign_key="device.id", max_length=128)
    model_id: int = Field(foreign_key="model.id")
    version: int
    kind: str = Field(max_length=16)
    at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    from_version: int | None = None
    to_version: int | None = None
    count: int = 1
    detail: str = Field(default="", max_length=1000)


class DeviceEventPublic(SQLModel):
    """A stored device event with the names of its device and model."""

    id: int
    device_id: str
    model: str
    version: int
    kind: str
    at: datetime
    from_version: int | None = None
    to_version: int | None = None
    count: int = 1
    detail: str = ""
    report_id: int
