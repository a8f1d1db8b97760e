"""The serving snapshot: what an inference runner learns from the registry over REST.

``GET /api/v1/serving/models`` (a runner key or an admin key) answers a :class:`ServingSnapshot`:
every model with its aliases (name → version number), its rollout salt, the routing view of its
active rollout (if any) and every version with its status, the sha256, size and download URL of
its three artifacts and its signature (with the key chain up to the signing key).
``generation`` is the registry's serving generation counter: it changes whenever a model,
version, alias or rollout changes, and the response's ``ETag`` is
built from it, so a runner that polls with ``If-None-Match`` gets ``304`` until something
changed. A runner checks each downloaded artifact against the digests here and the version's
signature as devices do (:func:`version_statement_of`, :mod:`edgefleet.signature`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.plan import PlanManifest
from edgefleet.signature import version_statement
from edgefleet.wire import ArtifactRef, VersionSignature

__all__ = [
    "SERVING_PATH",
    "ServingModel",
    "ServingRollout",
    "ServingSnapshot",
    "ServingVersion",
    "snapshot_etag",
    "version_statement_of",
]

#: Where the registry serves the snapshot (under ``edgefleet.wire.API_PREFIX``).
SERVING_PATH = "/serving/models"


class _Reply(BaseModel):
    """Responses ignore unknown fields, so a newer registry does not break an older runner."""

    model_config = ConfigDict(extra="ignore")


class ServingVersion(_Reply):
    """One version: status (a ``VersionStatus`` value), artifacts and signature."""

    number: int = Field(ge=1)
    status: str
    plan: ArtifactRef
    weights: ArtifactRef
    manifest: ArtifactRef
    signature: VersionSignature | None = None


class ServingRollout(_Reply):
    """What routing needs of a model's active rollout (the fields of
    ``registry.rollouts.strategies.RoutingView``: version numbers, the canary share, the
    selectors, the A/B variants as ``[name, version, weight]``, the shadow rate)."""

    rollout_id: int
    strategy: str
    state: str
    step: int
    phase: str
    candidate: int | None = None
    baseline: int | None = None
    percent: float | None = None
    selectors: list[dict[str, str] | None] = Field(default_factory=list)
    variants: list[tuple[str, int, float]] = Field(default_factory=list)
    shadow_rate: float = 0.0


class ServingModel(_Reply):
    """One model: its aliases (name → version number), versions and active rollout."""

    name: str
    salt: str = ""
    aliases: dict[str, int] = Field(default_factory=dict)
    versions: list[ServingVersion] = Field(default_factory=list)
    rollout: ServingRollout | None = None


class ServingSnapshot(_Reply):
    """Every model the registry serves, at one serving generation."""

    generation: int
    models: list[ServingModel] = Field(default_factory=list)


def snapshot_etag(generation: int) -> str:
    """The ``ETag`` of the snapshot at ``generation`` (a strong validator)."""
    return f'"serving-{generation}"'


def version_statement_of(model: str, version: ServingVersion, manifest: PlanManifest) -> bytes:
    """The statement the registry signed for ``version`` (digests from the snapshot, the plan's
    name, format and labels from its downloaded, digest-checked manifest)."""
    return version_statement(
        model=model, version=version.number, plan=version.plan, weights=version.weights,
        manifest=version.manifest, plan_name=manifest.name, plan_format=manifest.format,
        class_labels=manifest.output.class_labels,
    )
