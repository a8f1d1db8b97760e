"""The V2 hot path's engine: resolve from the serving table, run through the batchers.

:class:`Serving` ties a :class:`~server.inference.table.ServingTable` (entries in memory,
refreshed on change) to a :class:`~server.inference.pool.RuntimePool` (loaded versions and
their batchers). Every call is ``async`` and touches no database unless a model is not yet in
the table (read once in a worker thread) or a version is loaded for the first time.

Resolution (:meth:`Serving.resolve`): an explicit version answers itself; otherwise the model's
rollout snapshot, when it has one, chooses per caller (:func:`registry.rollouts.routing.choose`:
canary share, A/B variant, blue-green switch, shadow copy); otherwise the ``production`` alias
answers. A version must be READY (DAMAGED is 503, any other status 409).

Collector pauses: the objects of start-up (modules, routes, settings) and of each version's
loading live as long as the process, yet every full collection of Python's cyclic garbage
collector would walk them all while no request is served (hundreds of milliseconds for the
server's few hundred thousand objects on a slow core: a latency spike whenever the requests'
short-lived queue entries push a full collection). :meth:`Serving.start`, and the first use of
each newly loaded version, move what exists then out of the collector's reach
(:func:`gc.freeze`); :meth:`Serving.stop` gives it back (:func:`gc.unfreeze`), so the cycles
of a stopped application are collected again.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from edgefleet import v2
from edgefleet.plan import PlanManifest
from registry.errors import DamagedArtifactError, NotFoundError, VersionNotReadyError
from registry.models import PRODUCTION, VersionStatus
from registry.rollouts.routing import ModelSnapshot, choose
from server.inference.batcher import BatchingSettings, VersionBatcher
from server.inference.pool import RuntimePool
from server.inference.source import ModelEntry, ModelSource, ServedVersion
from server.inference.table import ServingTable

__all__ = ["Resolved", "Serving"]

log = logging.getLogger("edgefleet.server.serving")


@dataclass(frozen=True)
class Resolved:
    """What answers one request: the version, the alias or arm that named it, and whether a
    shadow version also runs (its answer logged, never returned)."""

    version: ServedVersion
    alias: str | None = None
    variant: str | None = None
    shadow: ServedVersion | None = None


class Serving:
    """Resolve and run V2 requests from memory (see the module notes)."""

    def __init__(
        self,
        source: ModelSource,
        *,
        batching: BatchingSettings | None = None,
        threads: int = 0,
        cache_size: int = 8,
        interpreter: str = "auto",
        refresh_interval_s: float = 0.25,
        max_batch: int = 1024,
    ) -> None:
        self.batching = batching or BatchingSettings()
        self.table = ServingTable(source, refresh_interval_s=refresh_interval_s)
        self.pool = RuntimePool(source, policy_for=self.batching.for_model, threads=threads,
                                cache_size=cache_size, interpreter=interpreter)
        self.max_batch = max_batch
        self._frozen: set[int] = set()  # id() of the batchers loaded before the last freeze

    def start(self) -> Serving:
        """Start the table's refresh (and, for a source that can watch this process's own
        commits, refresh right after each relevant one: read-your-writes)."""
        self.table.start()
        watch = getattr(self.table.source, "watch_commits", None)
        if watch is not None:
            watch(self._refresh_now)
        gc.freeze()  # see the module notes
        return self

    def stop(self) -> None:
        unwatch = getattr(self.table.source, "unwatch", None)
        if unwatch is not None:
            unwatch()
        self.table.stop()
        self.pool.close()
        gc.unfreeze()

    def _refresh_now(self) -> None:
        try:
            self.table.refresh()
        except Exception:  # the refresh thread retries within its interval
            log.exception("serving table: refresh after a commit failed")

    # --- resolution ---------------------------------------------------------------------------
    async def entry(self, model: str) -> ModelEntry:
        """The model's entry (from memory, or read once); 404 for an unknown model."""
        found = self.table.cached(model)
        if found is None:
            found = await run_in_threadpool(self.table.entry, model)
        if found is None:
            raise NotFoundError(f"model {model!r} not found")
        return found

    async def resolve(self, model: str, version: int | None = None, *, caller_key: str = "",
                      request_key: str = "") -> Resolved:
        """The READY version that answers (see the module notes)."""
        entry = await self.entry(model)
        if version is not None:
            return Resolved(_ready(entry, _version(entry, version)))
        if entry.rollout is not None:
            return _routed(entry, caller_key, request_key)
        number = entry.aliases.get(PRODUCTION)
        if number is None:
            raise NotFoundError(f"model {model!r} has no production version; name a version")
        return Resolved(_ready(entry, _version(entry, number)), alias=PRODUCTION)

    # --- running -------------------------------------------------------------------------------
    async def batcher(self, version: ServedVersion) -> VersionBatcher:
        """The loaded version (loaded in a worker thread on first use; then what its loading
        allocated is frozen, see the module notes)."""
        batcher = await self.pool.get(version)
        if id(batcher) not in self._frozen:
            if len(self._frozen) >= 1024:
                self._frozen.clear()
            self._frozen.add(id(batcher))
            gc.freeze()
        return batcher

    async def manifest(self, version: ServedVersion) -> PlanManifest:
        return (await self.pool.get(version)).manifest

    async def predict(self, version: ServedVersion, x: np.ndarray) -> np.ndarray:
        """The probabilities of validated rows ``x`` on ``version``."""
        return await (await self.pool.get(version)).predict(x)

    async def metadata(self, resolved: Resolved) -> dict[str, Any]:
        """V2 model metadata of the answering version (and the model's READY versions)."""
        manifest = await self.manifest(resolved.version)
        entry = await self.entry(resolved.version.model)
        ready = sorted(n for n, v in entry.versions.items() if v.status == VersionStatus.READY)
        return v2.model_metadata(resolved.version.model, ready, manifest,
                                 version=str(resolved.version.number), alias=resolved.alias)


def _version(entry: ModelEntry, number: int) -> ServedVersion:
    found = entry.versions.get(number)
    if found is None:
        raise NotFoundError(f"model {entry.name!r} has no version {number}")
    return found


def _ready(entry: ModelEntry, version: ServedVersion) -> ServedVersion:
    if version.status == VersionStatus.DAMAGED:
        raise DamagedArtifactError(
            f"version {version.number} of {entry.name!r} is DAMAGED (its stored artifacts do "
            "not match their digests) and is not served"
        )
    if version.status != VersionStatus.READY:
        raise VersionNotReadyError(
            f"version {version.number} of {entry.name!r} is {version.status}, not READY"
        )
    return version


def _routed(entry: ModelEntry, caller_key: str, request_key: str) -> Resolved:
    """The rollout snapshot's choice for this caller (and its shadow version, if any)."""
    if not isinstance(entry.rollout, ModelSnapshot):
        raise TypeError(f"a model entry's rollout is a ModelSnapshot, not {entry.rollout!r}")
    route = choose(entry.rollout, caller_key=caller_key, request_key=request_key)
    shadow = None
    if route.shadow_version is not None:
        candidate = entry.versions.get(route.shadow_version)
        if candidate is not None and candidate.status == VersionStatus.READY:
            shadow = candidate
    return Resolved(_ready(entry, _version(entry, route.version)), alias=route.alias,
                    variant=route.variant, shadow=shadow)
