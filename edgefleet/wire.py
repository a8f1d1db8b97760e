"""Schemas that travel over REST between devices, applications, the server and the aggregation.

The server's routes validate requests and serialise responses with these models; the edge agent
and the aggregation's registry client parse them. Only what *both* sides need lives here; the
server's own table models (``registry.models``) and admin-only shapes stay with the server.

Routes (all JSON unless noted; ``{m}`` = model name, ``{v}`` = version number)::

    POST /api/v1/devices/enroll                      EnrollRequest -> EnrollResponse
    GET  /api/v1/devices/{id}/assignment             -> Assignment   (ETag, If-None-Match -> 304)
    GET  /api/v1/models/{m}/versions/{v}/plan        bytes  (ETag = sha256, If-None-Match -> 304)
    GET  /api/v1/models/{m}/versions/{v}/weights     bytes  (ETag = sha256, If-None-Match -> 304)
    GET  /api/v1/models/{m}/versions/{v}/manifest    PlanManifest JSON
    POST /api/v1/devices/{id}/telemetry              TelemetryReport -> TelemetryAck
    POST /v2/models/{m}[/versions/{v}]/infer         InferenceRequest -> InferenceResponse

Registry routes for admin clients (the operator's tools, the aggregation's registry client)::

    POST /api/v1/models/{m}/versions                 multipart: metadata (VersionPublish JSON),
                                                     plan + plan_sha256, manifest, weights +
                                                     weights_sha256 -> VersionInfo (201).
                                                     Weights-only: omit plan and manifest; the
                                                     plan comes from ``plan_from_version`` or
                                                     ``lineage.parent_version``.
    GET  /api/v1/models/{m}/versions/{v}             -> VersionInfo
    GET  /api/v1/models/{m}/aliases/{a}[?at=T]       -> AliasInfo
    PUT  /api/v1/models/{m}/aliases/{a}              AliasMove -> AliasInfo
    POST /api/v1/models/{m}/aliases/{a}/rollback     AliasRollback -> AliasInfo
    GET  /api/v1/models/{m}/aliases/{a}/history      -> Page[AliasEventInfo]
    GET  /api/v1/versions?model=&federated_run=&metric=accuracy>=0.9&sort=accuracy
                                                     -> Page[VersionInfo]
    GET  /api/v1/models/{m}/versions/{v}/drift       fleet drift over time (also /summary,
                                                     /devices, /features)

Errors carry ``{"detail": "..."}`` under ``/api/v1`` and ``{"error": "..."}`` under ``/v2``. An
assignment poll answers 404 while no version is assigned (no model chosen, none in production).
Devices authenticate with ``Authorization: Bearer <device token>``; registry writes need
``X-Admin-Key`` (or a bearer admin key). Entity tags are quoted (RFC 9110): an artifact's ``ETag``
is ``"<sha256>"``; send it back verbatim in ``If-None-Match``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.drift import DriftSummary

API_PREFIX = "/api/v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
T = TypeVar("T")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Reply(BaseModel):
    """Responses ignore unknown fields, so a newer server does not break an older client."""

    model_config = ConfigDict(extra="ignore")


# --- devices ---------------------------------------------------------------------------------
class EnrollRequest(_Wire):
    enrollment_token: str = Field(min_length=1, max_length=512)
    device_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="stable id chosen by the operator; generated when absent",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="the model this device runs; the operator can also set it later",
    )


class EnrollResponse(_Wire):
    device_id: str
    device_token: str = Field(description="shown once; the server stores only its hash")


class ArtifactRef(_Wire):
    url: str = Field(description="path relative to the server's base URL")
    sha256: str
    size: int


class Assignment(_Wire):
    """What one device should run now."""

    device_id: str
    model: str
    version: int
    alias: str = Field(description="the alias that chose this version, e.g. 'production'")
    plan: ArtifactRef
    weights: ArtifactRef
    manifest_url: str
    poll_interval_s: float = 60.0


# --- telemetry -------------------------------------------------------------------------------
class InferenceStats(_Wire):
    local: int = 0
    fallback: int = 0
    errors: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None


class LocalEvaluation(_Wire):
    n_examples: int = Field(ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    loss: float | None = None


class TelemetryReport(_Wire):
    """One window of a device's observations. Retried reports carry the same idempotency key."""

    idempotency_key: str = Field(min_length=8, max_length=128)
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    drift: DriftSummary | None = None
    inference: InferenceStats = Field(default_factory=InferenceStats)
    local_eval: LocalEvaluation | None = None
    dropped_reports: int = Field(default=0, ge=0, description="reports the outbox had to drop")


class TelemetryAck(_Wire):
    report_id: int
    duplicate: bool


# --- registry: versions, lineage, aliases ---------------------------------------------------
VersionStatus = Literal["PENDING", "READY", "FAILED", "ARCHIVED"]
METRIC_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$"


class VersionLineage(_Wire):
    """Where a version came from. Every field is optional: a hand-trained plan has none."""

    parent_version: int | None = Field(default=None, ge=1)
    federated_run: str | None = Field(default=None, max_length=128)
    federated_round: int | None = Field(default=None, ge=0)
    num_clients: int | None = Field(default=None, ge=0)
    strategy: str | None = Field(default=None, max_length=128)
    drift_summary: dict[str, Any] | None = Field(
        default=None, description="the (fleet-merged) drift summary JSON behind this version"
    )
    training_data_ref: str | None = Field(default=None, max_length=1024)


class VersionPublish(_Wire):
    """Metadata of a new version: the ``metadata`` form field of the upload."""

    description: str = Field(default="", max_length=4000)
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. accuracy, f1")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    lineage: VersionLineage = Field(default_factory=VersionLineage)
    plan_from_version: int | None = Field(
        default=None, ge=1,
        description="weights-only publish: reuse this version's plan and manifest",
    )

    @field_validator("metrics")
    @classmethod
    def _finite_named_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        for name, value in metrics.items():
            if not re.match(METRIC_NAME_PATTERN, name):
                raise ValueError(f"invalid metric name {name!r}")
            if not math.isfinite(value):
                raise ValueError(f"metric {name!r} is not finite")
        return metrics


class ArtifactInfo(_Reply):
    sha256: str
    size: int
    url: str


class VersionInfo(_Reply):
    """A model version as the registry reports it."""

    model: str
    version: int
    status: VersionStatus
    plan: ArtifactInfo
    weights: ArtifactInfo
    manifest: ArtifactInfo
    description: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    lineage: VersionLineage = Field(default_factory=VersionLineage)
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime
    created_by: str


class AliasMove(_Wire):
    """Point an alias at a READY version (creating the alias when new)."""

    version: int = Field(ge=1)
    rollout_percent: float | None = Field(
        default=None, ge=0, le=100,
        description="share of the fleet that follows a canary alias; the default for new canaries",
    )
    reason: str = Field(default="", max_length=1000)


class AliasRollback(_Wire):
    reason: str = Field(default="rollback", max_length=1000)


class AliasInfo(_Reply):
    model: str
    alias: str
    version: int
    rollout_percent: float | None = None
    updated_at: datetime
    updated_by: str


class AliasEventInfo(_Reply):
    """One move of an alias; the history is append-only."""

    id: int
    model: str
    alias: str
    from_version: int | None
    to_version: int | None = Field(description="None when the alias was removed")
    rollout_percent: float | None = None
    at: datetime
    actor: str
    reason: str


class Page(_Reply, Generic[T]):
    """One page of a listing."""

    items: list[T]
    total: int
    limit: int
    offset: int


# --- Open Inference Protocol (V2) ------------------------------------------------------------
V2DataType = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: V2DataType
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


class V2Error(BaseModel):
    error: str


def artifact_url(model: str, version: int, kind: Literal["plan", "weights", "manifest"]) -> str:
    """The path (relative to the server's base URL) of one artifact of a version."""
    return f"{API_PREFIX}/models/{model}/versions/{version}/{kind}"
