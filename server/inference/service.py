"""The inference path: resolve a model (and version or alias), load its plan, run it.

:class:`InferenceService` is deliberately small and free of HTTP: routes hand it a session, a
model name, an optional version and a V2 request, and get a V2 response back. Later rollout
strategies (shadow traffic, server-side canaries) and micro-batching slot in here: resolution
returns a :class:`Target`, and :meth:`InferenceService.predict` is the one call that touches an
interpreter.

Loaded runtimes are cached by the content they run — ``(plan sha256, weights sha256)`` — in a
least-recently-used map of ``cache_size`` entries. Content never changes under a digest, so the
cache never serves stale weights; moving an alias simply resolves to another key. Concurrent
first requests for one version load it once (a lock per key). Each :class:`PlanRuntime`
serialises its own interpreter calls; requests run in the server's worker threads.

Loading re-hashes every blob it reads (:meth:`registry.store.ArtifactStore.read_verified`) and
checks that the manifest describes the plan. A mismatch is never served: the load fails with
:class:`~registry.errors.DamagedArtifactError` (503) and ``on_damaged(model, version, reason)``
is called, which the application wires to :func:`registry.integrity.report_damage` (the
version becomes DAMAGED, which :meth:`InferenceService.resolve` refuses from then on).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet import v2
from edgefleet.errors import EdgeFleetError
from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from edgefleet.v2 import InferenceRequest, InferenceResponse
from registry.catalog import get_model
from registry.errors import DamagedArtifactError, NotFoundError, VersionNotReadyError
from registry.models import PRODUCTION, Alias, Model, ModelVersion, VersionStatus
from registry.store import ArtifactStore
from registry.versions import get_version
from server.errors import ModelUnavailableError

__all__ = ["InferenceService", "Target"]


@dataclass(frozen=True)
class Target:
    """A resolved, READY version: what to load and how to name it in the response."""

    model: str
    version: int
    alias: str | None
    plan_sha256: str
    weights_sha256: str
    manifest_sha256: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.plan_sha256, self.weights_sha256)


class InferenceService:
    """Resolve, load (cached) and run model versions for V2 inference.

    Parameters
    ----------
    store
        The artifact store holding plans and weights.
    cache_size
        Loaded runtimes kept (default 8).
    max_batch
        Most rows per request (default 1024).
    interpreter
        ``auto``, ``ai-edge-litert`` or ``tflite-runtime``.
    on_damaged
        Called as ``on_damaged(model, version, reason)`` when a load finds an artifact that
        does not match its digest (default: nothing besides refusing it).
    """

    def __init__(
        self,
        store: ArtifactStore,
        *,
        cache_size: int = 8,
        max_batch: int = 1024,
        interpreter: str = "auto",
        on_damaged: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.on_damaged = on_damaged
        self.cache_size = cache_size
        self.max_batch = max_batch
        self.interpreter = interpreter
        self._cache: OrderedDict[tuple[str, str], PlanRuntime] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}

    # --- resolution --------------------------------------------------------------------------
    def resolve(self, session: Session, model: str, version: int | None = None) -> Target:
        """The READY version to serve: ``version``, or the model's ``production`` alias."""
        stmt = (
            sa.select(
                col(ModelVersion.number),
                col(ModelVersion.status),
                col(ModelVersion.plan_sha256),
                col(ModelVersion.weights_sha256),
                col(ModelVersion.manifest_sha256),
            )
            .join(Model, col(Model.id) == col(ModelVersion.model_id))
            .where(col(Model.name) == model)
        )
        if version is None:
            stmt = stmt.join(Alias, col(Alias.version_id) == col(ModelVersion.id)).where(
                col(Alias.name) == PRODUCTION
            )
        else:
            stmt = stmt.where(col(ModelVersion.number) == version)
        row = session.execute(stmt).first()
        if row is None:
            m = get_model(session, model)  # NotFoundError for an unknown model
            if version is not None:
                get_version(session, m, version)
            raise NotFoundError(f"model {model!r} has no production version; name a version")
        number, status, plan_sha256, weights_sha256, manifest_sha256 = row
        if status == VersionStatus.DAMAGED:
            raise DamagedArtifactError(
                f"version {number} of {model!r} is DAMAGED (its stored artifacts do not match "
                "their digests) and is not served"
            )
        if status != VersionStatus.READY:
            raise VersionNotReadyError(
                f"version {number} of {model!r} is {status.value}, not READY"
            )
        return Target(
            model=model,
            version=number,
            alias=PRODUCTION if version is None else None,
            plan_sha256=plan_sha256,
            weights_sha256=weights_sha256,
            manifest_sha256=manifest_sha256,
        )

    def ready_versions(self, session: Session, model: str) -> list[int]:
        m = get_model(session, model)
        return list(
            session.exec(
                select(ModelVersion.number)
                .where(ModelVersion.model_id == m.id, ModelVersion.status == VersionStatus.READY)
                .order_by(sa.asc(col(ModelVersion.number)))
            ).all()
        )

    # --- loading -----------------------------------------------------------------------------
    def runtime(self, target: Target) -> PlanRuntime:
        """The loaded runtime of ``target`` (from the cache, or loaded once and cached)."""
        with self._cache_lock:
            cached = self._cache.get(target.key)
            if cached is not None:
                self._cache.move_to_end(target.key)
                return cached
            lock = self._load_locks.setdefault(target.key, threading.Lock())
        with lock:
            with self._cache_lock:
                cached = self._cache.get(target.key)
            if cached is not None:
                return cached
            runtime = self._load(target)
            with self._cache_lock:
                self._cache[target.key] = runtime
                self._cache.move_to_end(target.key)
                while len(self._cache) > self.cache_size:
                    evicted, _ = self._cache.popitem(last=False)
                    self._load_locks.pop(evicted, None)
            return runtime

    def _load(self, target: Target) -> PlanRuntime:
        try:
            manifest_bytes, plan, weights_bytes = self._verified_blobs(target)
            manifest = PlanManifest.from_json(manifest_bytes)
            if manifest.plan_sha256 != target.plan_sha256:
                raise DamagedArtifactError("the stored manifest describes another plan")
            weights = weights_from_bytes(weights_bytes, manifest=manifest)
            return PlanRuntime.from_bytes(plan, manifest, weights, interpreter=self.interpreter)
        except DamagedArtifactError as exc:
            reason = str(exc)
            if self.on_damaged is not None:
                self.on_damaged(target.model, target.version, reason)
            raise DamagedArtifactError(
                f"version {target.version} of {target.model!r} is damaged and is not served: "
                f"{reason}"
            ) from exc
        except (NotFoundError, EdgeFleetError, ValueError) as exc:
            raise ModelUnavailableError(
                f"version {target.version} of {target.model!r} cannot be loaded: {exc}"
            ) from exc

    def _verified_blobs(self, target: Target) -> tuple[bytes, bytes, bytes]:
        """The manifest, plan and weights bytes, each re-hashed against its digest."""
        out = []
        for kind, sha in (("manifest", target.manifest_sha256), ("plan", target.plan_sha256),
                          ("weights", target.weights_sha256)):
            try:
                out.append(self.store.read_verified(sha))
            except DamagedArtifactError as exc:
                raise DamagedArtifactError(f"{kind}: {exc}") from exc
        return out[0], out[1], out[2]

    def cached_keys(self) -> list[tuple[str, str]]:
        with self._cache_lock:
            return list(self._cache)

    # --- inference ---------------------------------------------------------------------------
    def predict(
        self,
        target: Target,
        request: InferenceRequest,
        *,
        observe: Callable[[Any, Any, list[str]], None] | None = None,
    ) -> InferenceResponse:
        """Run ``request`` on ``target`` (blocking: call it from a worker thread).

        ``observe(x, probs, labels)``, when given, receives the decoded input, the
        probabilities and the labels of the answer (the inference log, :mod:`server.evidence`).
        """
        runtime = self.runtime(target)
        manifest = runtime.manifest
        names = v2.requested_outputs(request.outputs, manifest.output.name)
        x = v2.decode_input(request.inputs, manifest, max_batch=self.max_batch)
        probs = runtime.predict(x)
        labels = v2.predicted_labels(probs, manifest.output.class_labels)
        outputs = v2.encode_outputs(probs, labels, manifest.output.name, names)
        if observe is not None:
            observe(x, probs, labels)
        parameters = {"alias": target.alias} if target.alias else None
        return InferenceResponse(
            model_name=target.model,
            model_version=str(target.version),
            id=request.id,
            parameters=parameters,
            outputs=outputs,
        )

    # --- metadata ------------------------------------------------------------------------------
    def metadata(self, session: Session, target: Target) -> dict[str, Any]:
        """V2 model metadata of ``target`` (and the model's READY versions); loads it."""
        manifest = self.runtime(target).manifest
        return v2.model_metadata(target.model, self.ready_versions(session, target.model),
                                 manifest, version=str(target.version), alias=target.alias)

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return v2.server_metadata()
