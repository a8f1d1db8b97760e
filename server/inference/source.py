"""What the serving table asks for: a model source (see ``ServingTable``).

A :class:`ModelSource` resolves a model name to a :class:`ModelEntry` (its versions, aliases and
rollout snapshot), hands over a version's verified artifacts, and says through
:meth:`ModelSource.generation` when anything it would answer may have changed. The server's
source reads the database (:mod:`server.inference.db_source`); a process without a database
implements the same protocol over REST. This module imports neither the database nor HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["CREDENTIALS", "SERVING", "Artifacts", "ModelEntry", "ModelSource", "ServedVersion"]

#: Generation scope of models, versions, aliases and rollouts.
SERVING = "serving"
#: Generation scope of device tokens.
CREDENTIALS = "credentials"


@dataclass(frozen=True)
class ServedVersion:
    """One version of a model as the serving path needs it (``status`` a VersionStatus value)."""

    model: str
    number: int
    status: str
    plan_sha256: str
    weights_sha256: str
    manifest_sha256: str

    @property
    def key(self) -> tuple[str, str]:
        """What a loaded runtime is cached under: the content it runs."""
        return (self.plan_sha256, self.weights_sha256)


@dataclass(frozen=True)
class ModelEntry:
    """A model's versions (number → version), aliases (name → number) and rollout snapshot."""

    name: str
    versions: Mapping[int, ServedVersion]
    aliases: Mapping[str, int] = field(default_factory=dict)
    rollout: object | None = None
    salt: str = ""


@dataclass(frozen=True)
class Artifacts:
    """A version's manifest, plan and weights bytes, each checked against its digest."""

    manifest: bytes
    plan: bytes
    weights: bytes


@runtime_checkable
class ModelSource(Protocol):
    """Where the serving table's entries and artifacts come from."""

    def generation(self, scope: str) -> int:
        """A number that changes whenever an answer in ``scope`` (:data:`SERVING` or
        :data:`CREDENTIALS`) may have changed; cheap, called every refresh interval."""
        ...

    def entry(self, model: str) -> ModelEntry | None:
        """The model's current entry, or ``None`` when no such model exists (blocking)."""
        ...

    def artifacts(self, version: ServedVersion) -> Artifacts:
        """The version's verified bytes; :class:`~registry.errors.DamagedArtifactError` when
        one does not match its digest."""
        ...

    def report_damaged(self, model: str, number: int, reason: str) -> None:
        """Record that a version's artifacts did not match their digests."""
        ...
