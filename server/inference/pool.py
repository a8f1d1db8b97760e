"""Loaded versions: one :class:`~server.inference.batcher.VersionBatcher` per content, cached.

Each loaded version gets ``threads`` interpreters (one per pool thread, the pool sized to the
cores by default), so a backlog of requests for one heavy version can use every core (the
batcher starts a further interpreter for a full batch, see :mod:`server.inference.batcher`).
When its batch policy leaves them to be measured, a version's preferred batch sizes (the sizes
its calls are cut at) are measured on one of its interpreters as it loads, within about a second
(:mod:`server.inference.batch_sizes`). Versions are cached by the content they run — ``(plan
sha256, weights sha256)`` — in a least-recently-used map of ``cache_size`` entries: content
never changes under its digests, so a cached version is never stale and moving an alias simply
resolves to another key. Concurrent first requests for one version load it once. Loading
re-checks every digest (the source's :meth:`~server.inference.source.ModelSource.artifacts`); a
mismatch is reported to the source (the version becomes DAMAGED) and refused with 503.

With ``serving_copy`` (the default, when ``ai-edge-litert``'s flatbuffer schema is installed) a
version runs as a serving copy (:mod:`edgefleet.frozen`): built once per loaded version from
its verified plan and weights, with the weights as constants, so no call copies the weights out
of resource variables; the interpreters of one version share its bytes. A plan whose graph the
rewrite does not recognise runs as it is (logged once per load).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgefleet.errors import EdgeFleetError, PlanFormatError
from edgefleet.frozen import FrozenRuntime, freeze_plan, schema_available
from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from registry.errors import DamagedArtifactError, NotFoundError
from server.errors import ModelUnavailableError
from server.inference.batch_sizes import preferred_sizes
from server.inference.batcher import BatchPolicy, VersionBatcher
from server.inference.source import ModelSource, ServedVersion

__all__ = ["RuntimePool", "default_threads"]

log = logging.getLogger("edgefleet.server.serving")


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class RuntimePool:
    """Load (once), cache and hand out each version's batcher (see the module notes)."""

    def __init__(
        self,
        source: ModelSource,
        *,
        policy_for: Callable[[str], BatchPolicy],
        threads: int = 0,
        cache_size: int = 8,
        interpreter: str = "auto",
        serving_copy: bool = True,
    ) -> None:
        self.source = source
        self.policy_for = policy_for
        self.threads = threads or default_threads()
        self.cache_size = cache_size
        self.interpreter = interpreter
        self.serving_copy = serving_copy and schema_available()
        self._executor: ThreadPoolExecutor | None = None
        self._loaded: OrderedDict[tuple[str, str], VersionBatcher] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[VersionBatcher]] = {}

    async def get(self, version: ServedVersion) -> VersionBatcher:
        """The batcher of ``version``, loading it (in a worker thread) on first use."""
        key = version.key
        found = self._loaded.get(key)
        if found is not None:
            self._loaded.move_to_end(key)
            return found
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[VersionBatcher] = loop.create_future()
        self._loading[key] = future
        try:
            policy = self.policy_for(version.model)
            runtimes, policy = await loop.run_in_executor(self.executor, self._load, version,
                                                          policy)
            batcher = VersionBatcher(runtimes, policy, self.executor)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._loading.pop(key, None)
        self._loaded[key] = batcher
        while len(self._loaded) > self.cache_size:
            self._loaded.popitem(last=False)
        future.set_result(batcher)
        return batcher

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The interpreter threads (started on first use, again after :meth:`close`)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="edgefleet-infer")
        return self._executor

    def cached_keys(self) -> list[tuple[str, str]]:
        return list(self._loaded)

    def cached(self, key: tuple[str, str]) -> VersionBatcher | None:
        """The loaded batcher of content ``key`` (``ServedVersion.key``), if it is loaded."""
        return self._loaded.get(key)

    def close(self) -> None:
        """Stop the threads and forget the loaded versions."""
        self._loaded.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _load(self, version: ServedVersion, policy: BatchPolicy
              ) -> tuple[list[PlanRuntime], BatchPolicy]:
        """The version's runtimes and its batch policy, with the preferred batch sizes
        measured when the policy leaves them to be (:mod:`server.inference.batch_sizes`)."""
        name = f"version {version.number} of {version.model!r}"
        try:
            blobs = self.source.artifacts(version)
            manifest = PlanManifest.from_json(blobs.manifest)
            if manifest.plan_sha256 != version.plan_sha256:
                raise DamagedArtifactError("the stored manifest describes another plan")
            weights = weights_from_bytes(blobs.weights, manifest=manifest)
            runtimes = self._runtimes(name, blobs.plan, manifest, weights)
            if policy.preferred_batch_sizes is None:
                sizes = preferred_sizes(runtimes[0], policy.max_batch, name)
                policy = policy.model_copy(update={"preferred_batch_sizes": sizes})
            return runtimes, policy
        except DamagedArtifactError as exc:
            self.source.report_damaged(version.model, version.number, str(exc))
            raise DamagedArtifactError(f"{name} is damaged and is not served: {exc}") from exc
        except (NotFoundError, EdgeFleetError, ValueError) as exc:
            raise ModelUnavailableError(f"{name} cannot be loaded: {exc}") from exc

    def _runtimes(self, name: str, plan: bytes, manifest: PlanManifest,
                  weights: Mapping[str, np.ndarray]) -> list[PlanRuntime]:
        """``threads`` runtimes of one verified version: serving copies when possible."""
        if self.serving_copy:
            try:
                frozen = freeze_plan(plan, manifest, weights)
            except PlanFormatError as exc:
                log.warning("%s runs without a serving copy: %s", name, exc)
            else:
                return [FrozenRuntime(frozen, manifest, interpreter=self.interpreter)
                        for _ in range(self.threads)]
        return [PlanRuntime.from_bytes(plan, manifest, weights, interpreter=self.interpreter)
                for _ in range(self.threads)]
