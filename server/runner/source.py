"""The runner's model source: the registry's serving snapshot over REST, verified artifacts.

:class:`RestSource` implements :class:`server.inference.source.ModelSource` for the serving table
(:class:`server.inference.table.ServingTable`) and the runtime pool: :meth:`RestSource.generation`
polls the snapshot (``If-None-Match``: a ``304`` costs the registry one tiny query) and returns
the registry's serving generation, so the table reloads its entries after every change;
:meth:`RestSource.artifacts` takes a version's manifest, checks its digest, rebuilds the
version statement and verifies the registry's signature against the pinned keys (as the agent
does, ``edge_client/models.py``), then takes plan and weights and checks theirs. Anything that
does not match is :class:`~registry.errors.DamagedArtifactError`: the version is not loaded (the
request gets 503) and its cached files are discarded, so a later request downloads again.
Credentials are not this source's business: its ``credentials`` generation is always 0.
"""

from __future__ import annotations

import logging
import threading

from edgefleet.errors import EdgeFleetError, SignatureError
from edgefleet.plan import PlanManifest
from edgefleet.serving import (
    ServingModel,
    ServingRollout,
    ServingSnapshot,
    ServingVersion,
    version_statement_of,
)
from edgefleet.signature import key_id_of, verify_version
from edgefleet.wire import SigningKeyInfo
from registry.errors import DamagedArtifactError
from registry.rollouts.routing import ModelSnapshot
from registry.rollouts.strategies import RoutingView, warm_versions
from server.errors import ModelUnavailableError
from server.inference.source import SERVING, Artifacts, ModelEntry, ServedVersion
from server.runner.client import ArtifactCache, RegistryClient

__all__ = ["RestSource", "routing_snapshot"]

log = logging.getLogger("edgefleet.runner")


def _view(r: ServingRollout) -> RoutingView:
    return RoutingView(
        rollout_id=r.rollout_id, strategy=r.strategy, state=r.state, step=r.step, phase=r.phase,
        candidate=r.candidate, baseline=r.baseline, percent=r.percent,
        selectors=tuple(r.selectors), variants=tuple((name, int(version), float(weight))
                                                    for name, version, weight in r.variants),
        shadow_rate=r.shadow_rate,
    )


def routing_snapshot(model: ServingModel) -> ModelSnapshot:
    """The rollout routing snapshot of ``model`` (:mod:`registry.rollouts.routing`), from the
    registry's serving snapshot instead of the database."""
    view = None if model.rollout is None else _view(model.rollout)
    production = model.aliases.get("production")
    return ModelSnapshot(model=model.name, salt=model.salt, production=production, rollout=view,
                         warm=warm_versions(view, production), token="")


class RestSource:
    """A model source over the registry's REST API (see the module notes)."""

    def __init__(self, client: RegistryClient, cache: ArtifactCache,
                 pinned_public_keys: list[str]) -> None:
        self.client = client
        self.cache = cache
        self.pinned = [SigningKeyInfo(key_id=key_id_of(k), public_key=k)
                       for k in pinned_public_keys]
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._snapshot: ServingSnapshot | None = None
        self._versions: dict[tuple[str, int], ServingVersion] = {}
        self.refused: list[str] = []  # why artifacts were refused, newest last (bounded)

    # --- the snapshot ---------------------------------------------------------------------------
    def poll(self) -> ServingSnapshot:
        """Fetch the snapshot when it changed; the current one either way."""
        answer = self.client.snapshot(self._etag)
        with self._lock:
            if answer is not None:
                snapshot, etag = answer
                self._snapshot, self._etag = snapshot, etag
                self._versions = {(m.name, v.number): v for m in snapshot.models
                                  for v in m.versions}
            assert self._snapshot is not None
            return self._snapshot

    @property
    def ready(self) -> bool:
        """Whether a snapshot has been received."""
        return self._snapshot is not None

    def generation(self, scope: str) -> int:
        if scope != SERVING:
            return 0
        return self.poll().generation

    def entry(self, model: str) -> ModelEntry | None:
        snapshot = self._snapshot or self.poll()
        for m in snapshot.models:
            if m.name == model:
                return ModelEntry(
                    name=m.name,
                    versions={v.number: ServedVersion(m.name, v.number, v.status, v.plan.sha256,
                                                      v.weights.sha256, v.manifest.sha256)
                              for v in m.versions},
                    aliases=dict(m.aliases),
                    rollout=routing_snapshot(m),
                    salt=m.salt,
                )
        return None

    # --- artifacts ------------------------------------------------------------------------------
    def artifacts(self, version: ServedVersion) -> Artifacts:
        what = f"version {version.number} of {version.model!r}"
        served = self._versions.get((version.model, version.number))
        if served is None or served.manifest.sha256 != version.manifest_sha256:
            raise ModelUnavailableError(f"{what} is not in the registry's snapshot")
        manifest_bytes = self.cache.get(served.manifest, f"{what}: manifest")
        try:
            manifest = PlanManifest.from_json(manifest_bytes)
        except EdgeFleetError as exc:
            raise DamagedArtifactError(f"{what}: unusable manifest: {exc}") from exc
        self._verify_signature(version.model, served, manifest, what)
        plan = self.cache.get(served.plan, f"{what}: plan")
        weights = self.cache.get(served.weights, f"{what}: weights")
        return Artifacts(manifest=manifest_bytes, plan=plan, weights=weights)

    def _verify_signature(self, model: str, served: ServingVersion, manifest: PlanManifest,
                          what: str) -> None:
        sig = served.signature
        if sig is None:
            raise DamagedArtifactError(f"{what} is not signed — refused")
        with self._lock:
            if not self.pinned and sig.key_chain:  # trust on first use (see the settings)
                first = sig.key_chain[0]
                self.pinned = [SigningKeyInfo(key_id=first.key_id, public_key=first.public_key)]
                log.warning("runner: no signing key configured; pinned %s, the registry's "
                            "first key (trust on first use)", first.key_id)
            pinned = list(self.pinned)
        try:
            verify_version(version_statement_of(model, served, manifest), signer_id=sig.key_id,
                           signature=sig.signature, pinned=pinned, chain=sig.key_chain)
        except SignatureError as exc:
            raise DamagedArtifactError(f"{what}: signature refused: {exc}") from exc

    def report_damaged(self, model: str, number: int, reason: str) -> None:
        """Log the refusal and forget the version's cached files (downloaded again next time)."""
        log.error("runner: refused %s v%d: %s", model, number, reason)
        self.refused = [*self.refused[-99:], reason]
        served = self._versions.get((model, number))
        if served is not None:
            for ref in (served.manifest, served.plan, served.weights):
                self.cache.discard(ref.sha256)
