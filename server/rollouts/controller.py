"""Tick active rollouts in the background, one transaction per rollout per tick.

The controller keeps no state of its own: every tick reads the active rollouts from the
database and judges each (:func:`registry.rollouts.machine.tick`) in its own writing
transaction, the rollout's row re-read under a lock (``FOR UPDATE`` on PostgreSQL; SQLite's
write lock), so several server processes (workers) may run controllers side by side without
judging a rollout twice at once. A restarted server therefore resumes every rollout in the
state, step and step start time it had: bake times and timeouts count from the stored step
start. The first tick of a process after start-up records one ``resume`` event on each
rollout it finds running.

A tick the registry refuses (a candidate or variant archived or damaged meanwhile) rolls the
rollout back, naming the refusal. A tick that fails otherwise (the database unreachable, a bug)
is logged and retried at the next tick; it leaves the rollout unchanged (its transaction rolls
back).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from registry.db import session_scope
from registry.errors import RegistryError
from registry.models import utcnow
from registry.rollouts import machine, queries
from registry.rollouts.judge import EvidenceFn
from registry.version_evidence import version_evidence

__all__ = ["RolloutController"]

log = logging.getLogger("edgefleet.server.rollouts")


class RolloutController:
    """Ticks every ``interval_s`` seconds (0: never starts) in a daemon thread."""

    def __init__(self, engine: Engine, interval_s: float,
                 evidence: EvidenceFn | None = version_evidence) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.evidence = evidence
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-rollouts",
                                        daemon=True)
        self._resumed: set[int] = set()
        self._t0 = utcnow()

    def start(self) -> RolloutController:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_all()
            except Exception:  # the next tick retries; nothing was committed
                log.exception("rollout tick failed")
            self._stop.wait(self.interval_s)

    def tick_all(self) -> dict[int, str | None]:
        """Judge every active rollout once; what each did (``None``: nothing)."""
        with session_scope(self.engine) as s:
            ids = queries.active_rollout_ids(s)
        return {rid: self.tick_one(rid) for rid in ids}

    def tick_one(self, rollout_id: int) -> str | None:
        """Judge one rollout; one the registry refuses to move on (a version no longer READY)
        is rolled back in a second transaction, with the refusal as its reason."""
        try:
            return self._tick(rollout_id)
        except RegistryError as exc:
            with session_scope(self.engine, write=True) as s:
                machine.abandon(s, queries.get_rollout(s, rollout_id, for_update=True), str(exc))
            log.warning("rollout %s rolled back: %s", rollout_id, exc)
            return "rollback"

    def _tick(self, rollout_id: int) -> str | None:
        with session_scope(self.engine, write=True) as s:
            row = queries.get_rollout(s, rollout_id, for_update=True)
            if row.id not in self._resumed:
                self._resumed.add(rollout_id)
                if row.state == "running" and row.updated_at < self._t0:
                    machine.resumed(s, row)
            kind = machine.tick(s, row, evidence=self.evidence, now=utcnow())
        if kind is not None:
            log.info("rollout %s: %s", rollout_id, kind)
        return kind

