"""Versions beside the active one that a rollout hands the device: a pre-download, a shadow.

An assignment may carry (``edgefleet.wire.Assignment``):

* ``prefetch`` — a blue-green pre-download: :meth:`SideVersions.sync` downloads the version,
  checks its digests and signature and smoke-tests it exactly as an install would
  (:class:`edge_client.models.ModelManager`'s staging), **without switching**, keeps it in
  ``<models_dir>/.prefetch-<model>-<version>``, and reports a ``prefetched`` device event (or
  ``smoke_failed``/``refused`` when it fails). It is done once per version and digests. When the
  switch comes (the assignment names that version), :meth:`SideVersions.prefetched_for` hands
  the directory to the install (:meth:`ModelManager.install`'s ``prefetched``), which copies
  its files instead of downloading them — each hashed against the assignment's digests and the
  signature checked, as for a download; a damaged file is downloaded — and
  :meth:`SideVersions.consumed` then drops it.
* ``shadow`` — the same checks, then the version is loaded (``.shadow-<model>-<version>``) and
  :class:`ShadowRun` runs it on every local inference of the active version
  (:meth:`edge_client.telemetry.Telemetry.record_local`); its answers are never served, only
  counted: rows compared, rows whose predicted class agrees, the summed confidence difference
  (shadow minus active), reported per telemetry window as ``TelemetryReport.shadow``. The
  request's latency includes the shadow's run (its own latency is not reported).

When the assignment stops naming a side version, its directory and runtime are dropped (a
pre-download of the very version assigned, not yet active, is kept for its install).
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_client.errors import AgentError, IntegrityError, ModelRejectedError
from edge_client.events import from_model_event
from edge_client.models import ModelManager
from edge_client.smoke import smoke_test
from edgefleet.errors import EdgeFleetError
from edgefleet.runtime import PlanRuntime
from edgefleet.signature import KeyLink
from edgefleet.wire import Assignment, DeviceEvent, PrefetchRef, ShadowStats

if TYPE_CHECKING:
    from edge_client.client import ServerClient
    from edge_client.telemetry import Telemetry

__all__ = ["ShadowRun", "SideVersions"]

log = logging.getLogger(__name__)


@dataclass
class ShadowRun:
    """A loaded shadow version and what it did in the current telemetry window."""

    model: str
    version: int
    runtime: PlanRuntime
    n: int = 0
    agree: int = 0
    delta: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, x: np.ndarray, probs: np.ndarray) -> None:
        """Run the shadow on the rows the active version answered (``probs``); count."""
        try:
            shadow = self.runtime.predict(x)
        except (EdgeFleetError, RuntimeError, ValueError) as exc:  # never break the answer
            log.warning("shadow v%s failed: %s", self.version, exc)
            return
        if shadow.shape != probs.shape or not np.all(np.isfinite(shadow)):
            return
        agree = int(np.sum(np.argmax(shadow, axis=1) == np.argmax(probs, axis=1)))
        delta = float(np.sum(np.max(shadow, axis=1) - np.max(probs, axis=1)))
        with self._lock:
            self.n += int(x.shape[0])
            self.agree += agree
            self.delta += delta

    def take(self) -> ShadowStats | None:
        """This window's figures (``None`` when it compared nothing); the counters restart."""
        with self._lock:
            if not self.n:
                return None
            out = ShadowStats(version=self.version, n=self.n, agree=self.agree,
                              confidence_delta_sum=self.delta)
            self.n = self.agree = 0
            self.delta = 0.0
            return out


def _as_assignment(a: Assignment, ref: PrefetchRef) -> Assignment:
    return Assignment(device_id=a.device_id, model=a.model, version=ref.version, alias="side",
                      plan=ref.plan, weights=ref.weights, manifest_url=ref.manifest_url,
                      manifest=ref.manifest, signature=ref.signature)


class SideVersions:
    """Keeps the prefetched and shadow versions an assignment names (see the module notes)."""

    def __init__(self, models: ModelManager, telemetry: Telemetry,
                 pinned: Callable[[], list[KeyLink]]) -> None:
        self.models = models
        self.telemetry = telemetry
        self.events = telemetry.events
        self.pinned = pinned
        self._prefetched: tuple[str, int, str] | None = None
        self._failed: set[tuple[str, int, str]] = set()

    @property
    def shadow(self) -> ShadowRun | None:
        shadow = self.telemetry.shadow
        return shadow if isinstance(shadow, ShadowRun) else None

    def sync(self, client: ServerClient, a: Assignment | None) -> None:
        """Bring the side versions in line with ``a`` (download, check, load or drop)."""
        pinned = self.pinned()
        prefetch = a.prefetch if a is not None else None
        shadow = a.shadow if a is not None else None
        if a is None or prefetch is None:
            self._drop("prefetch", keep=self.prefetched_for(a))
            self._prefetched = None
        elif (a.model, prefetch.version, prefetch.weights.sha256) != self._prefetched:
            self._prefetch(client, a, prefetch, pinned)
        if a is None or shadow is None:
            self._drop("shadow")
            self.telemetry.shadow = None
        elif self.shadow is None or (self.shadow.model, self.shadow.version) != (
                a.model, shadow.version):
            self._load_shadow(client, a, shadow, pinned)

    def prefetched_for(self, a: Assignment | None) -> Path | None:
        """The pre-download of ``a``'s own version, when one is on disk and ``a`` is not active
        yet (the blue-green switch); its files are verified by the install that uses them."""
        if a is None or self.models.is_current(a):
            return None
        path = self._dir("prefetch", a.model, a.version)
        return path if path.is_dir() else None

    def consumed(self, a: Assignment) -> None:
        """``a`` was installed (or refused): its pre-download has served its purpose."""
        shutil.rmtree(self._dir("prefetch", a.model, a.version), ignore_errors=True)

    def _dir(self, kind: str, model: str, version: int) -> Path:
        return self.models.models_dir / f".{kind}-{model}-{version}"

    def _drop(self, kind: str, keep: Path | None = None) -> None:
        for path in self.models.models_dir.glob(f".{kind}-*"):
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    def _stage(self, client: ServerClient, a: Assignment, ref: PrefetchRef, kind: str,
               pinned: list[KeyLink]) -> PlanRuntime | None:
        """Download, check and smoke-test ``ref`` into its directory; ``None`` when refused.

        The files of an earlier attempt at the same version (a previous run of the agent, an
        interrupted download) are reused when they still hash right, not fetched again."""
        key = (a.model, ref.version, ref.weights.sha256)
        if key in self._failed:
            return None
        target = self._dir(kind, a.model, ref.version)
        earlier = None
        if target.is_dir():  # ``.staging-*``: removed at the next start if this is cut short
            earlier = target.rename(self.models.models_dir / f".staging-{kind}-{uuid.uuid4().hex}")
        self._drop(kind)
        target.mkdir(parents=True)
        side = _as_assignment(a, ref)
        try:  # the install's own staging: digests, signature, manifest (no activation)
            self.models._stage(client, side, target, pinned, prefetched=earlier)
            runtime = PlanRuntime.from_dir(target, interpreter=self.models.interpreter)
            smoke_test(runtime)
        except (ModelRejectedError, IntegrityError, EdgeFleetError, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            self._failed.add(key)
            reason = str(exc) if isinstance(exc, ModelRejectedError | IntegrityError) \
                else f"{ref.version} does not load: {exc}"
            event = from_model_event("rejected", {"model": a.model, "version": ref.version,
                                                  "reason": reason}, {})
            if event is not None:
                self.events.add([event])
            log.error("%s v%s refused: %s", kind, ref.version, reason)
            return None
        finally:
            if earlier is not None:
                shutil.rmtree(earlier, ignore_errors=True)
        return runtime

    def _prefetch(self, client: ServerClient, a: Assignment, ref: PrefetchRef,
                  pinned: list[KeyLink]) -> None:
        try:
            runtime = self._stage(client, a, ref, "prefetch", pinned)
        except AgentError as exc:  # the network: retried on the next poll
            log.warning("prefetch of v%s failed, retried later: %s", ref.version, exc)
            return
        if runtime is None:
            return
        self._prefetched = (a.model, ref.version, ref.weights.sha256)
        self.events.add([DeviceEvent(kind="prefetched", at=datetime.now(UTC), model=a.model,
                                     version=ref.version, detail="downloaded, verified and "
                                     "smoke-tested; not active")])

    def _load_shadow(self, client: ServerClient, a: Assignment, ref: PrefetchRef,
                     pinned: list[KeyLink]) -> None:
        try:
            runtime = self._stage(client, a, ref, "shadow", pinned)
        except AgentError as exc:
            log.warning("shadow v%s not loaded, retried later: %s", ref.version, exc)
            return
        if runtime is not None:
            self.telemetry.shadow = ShadowRun(a.model, ref.version, runtime)

