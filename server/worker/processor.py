"""The event processor: read prediction requests from a broker, batch them, run, answer.

One :class:`Worker` serves one model from one consumer group. Its loop, one batch at a time:

1. follow the alias: every ``refresh_s`` the alias (or the pinned version) is resolved in the
   registry; when it names another version, that version is loaded through the server's
   :class:`~server.inference.service.InferenceService` (digest checks included) and swapped in
   *between* batches, so a message is always answered by exactly one version and none is lost;
2. take requests: first those another consumer left unacknowledged for ``claim_idle_s`` (a
   killed worker's batch), else new ones — at most ``max_batch``, waiting at most ``max_wait_s``
   for the batch to fill once the first request is there;
3. parse and check each request (:class:`edgefleet.ondemand.PredictionRequest`, the plan's
   feature count, at most ``max_deliveries`` attempts); refused ones become dead letters (and,
   when their id is readable, an error result, so their caller is not left waiting);
4. run the accepted rows in one ``predict`` call (one request's bad values cannot fail the
   others: on an input error each request is run alone);
5. write every result (idempotent per request id: a redelivered request whose result exists
   writes nothing), then the dead letters, and only then acknowledge the batch.

A crash at any point before step 5 ends leaves the batch unacknowledged: it is delivered again
and answered once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Engine

from edgefleet.errors import InputError
from edgefleet.ondemand import REQUEST_ID_PATTERN, PredictionRequest, PredictionResult
from edgefleet.runtime import PlanRuntime
from registry.db import session_scope
from registry.models import utcnow
from server.inference.service import InferenceService, Target
from server.precompute.resolve import resolve_target
from server.worker.broker import Broker, DeadLetter, Delivery

__all__ = ["Worker", "WorkerConfig", "WorkerStats"]

log = logging.getLogger("edgefleet.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker serves and how it batches.

    Parameters
    ----------
    model
        The model served.
    version, alias
        A pinned version, or the alias followed (default ``production``).
    max_batch
        Most requests per batch (default 32).
    max_wait_s
        Longest wait for a batch to fill once its first request arrived (default 0.005).
    block_s
        Longest wait for a first request before the loop goes round again (default 0.5).
    claim_idle_s
        Unacknowledged requests idle this long are taken over from their consumer (default 30).
    max_deliveries
        A request delivered more often than this is dead-lettered (default 5).
    refresh_s
        How often the alias is resolved again (default 2).
    """

    model: str
    version: int | None = None
    alias: str | None = None
    max_batch: int = 32
    max_wait_s: float = 0.005
    block_s: float = 0.5
    claim_idle_s: float = 30.0
    max_deliveries: int = 5
    refresh_s: float = 2.0


@dataclass
class WorkerStats:
    """Counters of one worker (since it started)."""

    batches: int = 0
    requests: int = 0
    results_written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    reclaimed: int = 0
    versions: list[int] = field(default_factory=list)


class Worker:
    """Serve ``config.model`` from ``broker`` (see the module notes)."""

    def __init__(
        self, config: WorkerConfig, broker: Broker, engine: Engine, service: InferenceService
    ) -> None:
        self.config = config
        self.broker = broker
        self.engine = engine
        self.service = service
        self.stats = WorkerStats()
        self.target: Target | None = None
        self.runtime: PlanRuntime | None = None
        self._resolved_at = -float("inf")
        self._reclaim_at = -float("inf")

    @property
    def name(self) -> str:
        return self.broker.consumer

    async def start(self) -> None:
        """Set the broker up and load the version to serve (errors if there is none)."""
        await self.broker.setup()
        await self.refresh(force=True)

    async def run(self, stop: asyncio.Event | None = None, *, on_batch: Callable[[], None] | None
                  = None) -> WorkerStats:
        """Serve until ``stop`` is set (or forever); returns the counters."""
        stop = stop or asyncio.Event()
        if self.runtime is None:
            await self.start()
        while not stop.is_set():
            await self.step()
            if on_batch is not None:
                on_batch()
        return self.stats

    async def refresh(self, *, force: bool = False) -> Target:
        """Resolve the alias (at most every ``refresh_s``) and swap versions when it moved."""
        now = time.monotonic()
        fresh = now - self._resolved_at < self.config.refresh_s
        if not force and self.target is not None and fresh:
            return self.target
        self._resolved_at = now
        try:
            target = await asyncio.to_thread(self._resolve)
            if target != self.target:
                runtime = await asyncio.to_thread(self.service.runtime, target)
                if self.target is not None:
                    log.info("%s: version %s -> %s", self.name, self.target.version, target.version)
                self.target, self.runtime = target, runtime
                self.stats.versions.append(target.version)
        except Exception:
            if self.target is None:
                raise
            log.warning("%s: cannot resolve %s; keeping version %s", self.name,
                        self.config.model, self.target.version, exc_info=True)
        assert self.target is not None
        return self.target

    def _resolve(self) -> Target:
        with session_scope(self.engine) as session:
            return resolve_target(
                session, self.config.model, version=self.config.version, alias=self.config.alias
            )

    async def step(self) -> int:
        """Handle one batch (possibly empty); the number of messages handled."""
        await self.refresh()
        cfg = self.config
        batch: list[Delivery] = []
        now = time.monotonic()
        if now >= self._reclaim_at:
            self._reclaim_at = now + max(0.1, cfg.claim_idle_s / 2)
            batch = await self.broker.reclaim(cfg.claim_idle_s, cfg.max_batch)
            self.stats.reclaimed += len(batch)
        if not batch:
            batch = await self.broker.read(cfg.max_batch, cfg.max_wait_s, cfg.block_s)
        if batch:
            await self.handle(batch)
        return len(batch)

    async def handle(self, batch: list[Delivery]) -> None:
        """Steps 3–5 of the module notes for one batch."""
        assert self.target is not None and self.runtime is not None
        target, runtime = self.target, self.runtime
        accepted, letters = self._check(batch, runtime.manifest.input.n_features)
        results, refused = self._run(accepted, target, runtime)
        letters.extend(refused)
        results.extend(self._error_result(letter, target) for letter in letters
                       if _request_id(letter.delivery.data) is not None)
        payload = [(r.id, r.model_dump_json().encode()) for r in results]
        written = await self.broker.write_results(payload)
        await self.broker.dead_letter(letters)
        await self.broker.ack(batch)
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.results_written += written
        self.stats.duplicates += len(payload) - written
        self.stats.dead_letters += len(letters)

    def _check(
        self, batch: list[Delivery], n_features: int
    ) -> tuple[list[tuple[Delivery, PredictionRequest]], list[DeadLetter]]:
        accepted: list[tuple[Delivery, PredictionRequest]] = []
        letters: list[DeadLetter] = []
        for d in batch:
            if d.deliveries > self.config.max_deliveries:
                letters.append(DeadLetter(d, f"delivered {d.deliveries} times without a result"))
                continue
            try:
                req = PredictionRequest.model_validate_json(d.data)
            except ValidationError as exc:
                letters.append(DeadLetter(d, _summarize(exc)))
                continue
            widths = {len(row) for row in req.inputs}
            if widths != {n_features}:
                letters.append(DeadLetter(
                    d, f"rows must have {n_features} features, got {sorted(widths)}"))
                continue
            accepted.append((d, req))
        return accepted, letters

    def _run(
        self,
        accepted: list[tuple[Delivery, PredictionRequest]],
        target: Target,
        runtime: PlanRuntime,
    ) -> tuple[list[PredictionResult], list[DeadLetter]]:
        if not accepted:
            return [], []
        try:
            x = np.asarray([row for _, req in accepted for row in req.inputs], dtype=np.float32)
            probs = runtime.predict(x)
        except InputError as exc:  # one request's values (e.g. NaN): isolate it
            if len(accepted) == 1:
                return [], [DeadLetter(accepted[0][0], f"the plan refused the values: {exc}")]
            results: list[PredictionResult] = []
            letters: list[DeadLetter] = []
            for item in accepted:
                ok, bad = self._run([item], target, runtime)
                results.extend(ok)
                letters.extend(bad)
            return results, letters
        labels = np.asarray(runtime.manifest.output.class_labels)
        out, at, now = [], 0, utcnow()
        for _, req in accepted:
            p = probs[at : at + len(req.inputs)]
            at += len(req.inputs)
            out.append(PredictionResult(
                id=req.id, model=target.model, version=target.version, alias=target.alias,
                labels=labels[np.argmax(p, axis=1)].tolist(), probabilities=p.tolist(),
                worker=self.name, computed_at=now,
            ))
        return out, []

    def _error_result(self, letter: DeadLetter, target: Target) -> PredictionResult:
        return PredictionResult(
            id=_request_id(letter.delivery.data) or "", model=target.model,
            version=target.version, alias=target.alias, error=letter.reason, worker=self.name,
            computed_at=utcnow(),
        )


def _request_id(data: bytes) -> str | None:
    """The request id of a (possibly malformed) message, when one can be read safely."""
    try:
        value = json.loads(data).get("id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and re.match(REQUEST_ID_PATTERN, value) else None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "malformed request: " + "; ".join(parts)
