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

Errors carry ``{"detail": "..."}`` under ``/api/v1`` (plus ``errors``, the list of validation
issues, when a request did not validate) and ``{"error": "..."}`` under ``/v2``. Every number,
name, text and time that reaches the database is bounded by :mod:`edgefleet.bounds`. An
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

from edgefleet.bounds import ALIAS_PATTERN as ALIAS_PATTERN  # re-exported
from edgefleet.bounds import (
    NAME_PATTERN,
    CleanLine,
    CleanText,
    Count,
    FiniteFloat,
    JsonObject,
    Labels,
    NonNegativeFinite,
    Timestamp,
    VersionNumber,
)
from edgefleet.drift import DriftSummary
from edgefleet.v2 import (  # the V2 schemas live with their codec; re-exported
    InferenceRequest as InferenceRequest,
)
from edgefleet.v2 import InferenceResponse as InferenceResponse
from edgefleet.v2 import InferTensor as InferTensor
from edgefleet.v2 import RequestedOutput as RequestedOutput
from edgefleet.v2 import V2DataType as V2DataType
from edgefleet.v2 import V2Error as V2Error

API_PREFIX = "/api/v1"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
T = TypeVar("T")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Reply(BaseModel):
    """Responses ignore unknown fields, so a newer server does not break an older client."""

    model_config = ConfigDict(extra="ignore")


# --- devices ---------------------------------------------------------------------------------
class EnrollRequest(_Wire):
    enrollment_token: CleanLine = Field(min_length=1, max_length=512)
    device_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="stable id chosen by the operator; generated when absent",
    )
    labels: Labels = Field(default_factory=dict)
    hardware: JsonObject = Field(default_factory=dict)
    model: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="the model this device runs; the operator can also set it later",
    )


class SigningKeyInfo(_Reply):
    """A public key the registry signs versions with (see :mod:`edgefleet.signature`).

    ``endorsed_by``/``endorsement``: the previous key's id and its signature over this key's
    rotation statement (absent for the first key).
    """

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str = Field(description="the 32 raw public key bytes, base64")
    endorsed_by: str | None = None
    endorsement: str | None = None


class VersionSignature(_Reply):
    """The registry's signature over a version statement (:mod:`edgefleet.signature`)."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(description="Ed25519 signature, base64")
    key_chain: list[SigningKeyInfo] = Field(
        default_factory=list, description="keys from the first to the signer, each endorsed"
    )


class EnrollResponse(_Wire):
    device_id: str
    device_token: str = Field(description="shown once; the server stores only its hash")
    signing_key: SigningKeyInfo | None = Field(
        default=None, description="the registry's current version-signing key: pin it"
    )


class ArtifactRef(_Wire):
    url: str = Field(description="path relative to the server's base URL")
    sha256: str
    size: int


class PrefetchRef(_Wire):
    """Another version the device fetches beside its assignment: downloaded, verified and
    smoke-tested without switching (a blue-green pre-download), or run beside the active
    version without serving its answers (a shadow)."""

    version: VersionNumber
    plan: ArtifactRef
    weights: ArtifactRef
    manifest_url: str
    manifest: ArtifactRef | None = None
    signature: VersionSignature | None = None


class Assignment(_Wire):
    """What one device should run now (and, under a rollout, which arm chose it)."""

    device_id: str
    model: str
    version: int
    alias: str = Field(description="the alias that chose this version, e.g. 'production'")
    plan: ArtifactRef
    weights: ArtifactRef
    manifest_url: str
    manifest: ArtifactRef | None = Field(default=None, description="the manifest's digest")
    signature: VersionSignature | None = Field(
        default=None, description="the registry's signature over the version statement"
    )
    poll_interval_s: float = 60.0
    rollout_id: int | None = Field(default=None, description="the rollout that chose it")
    variant: str | None = Field(default=None, max_length=64,
                                description="the rollout arm: baseline, candidate, an A/B name")
    prefetch: PrefetchRef | None = Field(default=None, description="blue-green pre-download")
    shadow: PrefetchRef | None = Field(default=None, description="run beside, never serve")


# --- telemetry -------------------------------------------------------------------------------
class InferenceStats(_Wire):
    """Counters of one window (each 0 to 2³¹ − 1) and finite latencies."""

    local: Count = 0
    fallback: Count = 0
    errors: Count = 0
    latency_ms_p50: NonNegativeFinite | None = None
    latency_ms_p99: NonNegativeFinite | None = None


class LocalEvaluation(_Wire):
    n_examples: Count
    accuracy: FiniteFloat | None = Field(default=None, ge=0, le=1)
    loss: FiniteFloat | None = None


DeviceEventKind = Literal["switch", "smoke_failed", "refused", "crash", "rollback", "prefetched"]
MAX_EVENTS_PER_REPORT = 100


class DeviceEvent(_Wire):
    """Something that happened to a model version on the device (``edge_client.events``).

    ``switch``: ``version`` became active (``from_version`` was); ``smoke_failed``: ``version``
    was downloaded but failed to load or its smoke test; ``refused``: it failed an integrity or
    signature check; ``crash``: the active ``version`` failed to answer (``count`` failures
    since the last report); ``rollback``: ``version`` was abandoned for ``to_version`` (``None``:
    nothing left to run); ``prefetched``: ``version`` was downloaded and passed its smoke test
    without becoming active.
    """

    kind: DeviceEventKind
    at: Timestamp
    model: str = Field(pattern=NAME_PATTERN)
    version: VersionNumber
    from_version: VersionNumber | None = None
    to_version: VersionNumber | None = None
    count: Count = Field(default=1, ge=1)
    detail: CleanText = Field(default="", max_length=1000)


class ShadowStats(_Wire):
    """A shadow ``version`` run beside the active one in this window: ``n`` rows compared,
    ``agree`` of them with the same predicted class, and the sum over rows of the shadow's
    confidence minus the active version's."""

    version: VersionNumber
    n: Count
    agree: Count
    confidence_delta_sum: FiniteFloat = 0.0


class TelemetryReport(_Wire):
    """One window of a device's observations. Retried reports carry the same idempotency key."""

    idempotency_key: CleanLine = Field(min_length=8, max_length=128)
    model: str = Field(pattern=NAME_PATTERN)
    version: VersionNumber
    window_start: Timestamp
    window_end: Timestamp
    drift: DriftSummary | None = None
    inference: InferenceStats = Field(default_factory=InferenceStats)
    local_eval: LocalEvaluation | None = None
    dropped_reports: Count = Field(default=0, description="reports the outbox had to drop")
    events: list[DeviceEvent] = Field(default_factory=list, max_length=MAX_EVENTS_PER_REPORT)
    shadow: ShadowStats | None = None


class TelemetryAck(_Wire):
    report_id: int
    duplicate: bool


# --- registry: versions, lineage, aliases ---------------------------------------------------
VersionStatus = Literal["PENDING", "READY", "FAILED", "ARCHIVED", "DAMAGED"]
METRIC_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$"


class VersionLineage(_Wire):
    """Where a version came from. Every field is optional: a hand-trained plan has none."""

    parent_version: VersionNumber | None = None
    federated_run: CleanLine | None = Field(default=None, max_length=128)
    federated_round: Count | None = None
    num_clients: Count | None = None
    strategy: CleanLine | None = Field(default=None, max_length=128)
    drift_summary: JsonObject | None = Field(
        default=None, description="the (fleet-merged) drift summary JSON behind this version"
    )
    training_data_ref: CleanLine | None = Field(default=None, max_length=1024)


class VersionPublish(_Wire):
    """Metadata of a new version: the ``metadata`` form field of the upload."""

    description: CleanText = Field(default="", max_length=4000)
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. accuracy, f1")
    hyperparameters: JsonObject = Field(default_factory=dict)
    lineage: VersionLineage = Field(default_factory=VersionLineage)
    plan_from_version: VersionNumber | None = Field(
        default=None,
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
    status_reason: str = ""
    signature: VersionSignature | None = None


class AliasMove(_Wire):
    """Point an alias at a READY version (creating the alias when new)."""

    version: VersionNumber
    rollout_percent: FiniteFloat | None = Field(
        default=None, ge=0, le=100,
        description="share of the fleet that follows a canary alias; the default for new canaries",
    )
    reason: CleanText = Field(default="", max_length=1000)


class AliasRollback(_Wire):
    reason: CleanText = Field(default="rollback", max_length=1000)


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


def artifact_url(model: str, version: int, kind: Literal["plan", "weights", "manifest"]) -> str:
    """The path (relative to the server's base URL) of one artifact of a version."""
    return f"{API_PREFIX}/models/{model}/versions/{version}/{kind}"
