"""The serving table: each model's entry in memory, refreshed when the source says it changed.

A background thread reads the source's generation counters every ``refresh_interval_s``
(:meth:`~server.inference.source.ModelSource.generation`). When ``serving`` changed, it
re-reads the entry of every model it holds and replaces the whole map in one assignment: a
request sees all old entries or all new ones. When ``credentials`` changed, it calls every
``on_credentials_change`` callback (the device-token cache empties itself).

**Staleness bound**: a change committed at time T is answered by every request that starts after
T + ``refresh_interval_s`` + the duration of one refresh, in every process that holds a table
(each has its own thread). A refresh that fails (the database is down) keeps the entries it has
and retries at the next tick; the failure is logged once per outage. A generation is recorded
only once what it calls for is done (the entries reloaded and swapped in, the callbacks run),
so a refresh that fails partway is redone in full at the next tick.

A model not yet in the table is read on first use (:meth:`ServingTable.entry`, blocking: call
it from a worker thread); what that read returns is kept only if no refresh swapped the map
meanwhile (it may predate the change the refresh saw). At most ``max_models`` entries are kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from server.inference.source import CREDENTIALS, SERVING, ModelEntry, ModelSource

__all__ = ["ServingTable"]

log = logging.getLogger("edgefleet.server.serving")


class ServingTable:
    """Model entries from ``source``, refreshed on change (see the module notes)."""

    def __init__(self, source: ModelSource, *, refresh_interval_s: float = 0.25,
                 max_models: int = 1024) -> None:
        self.source = source
        self.refresh_interval_s = refresh_interval_s
        self.max_models = max_models
        self.on_credentials_change: list[Callable[[], None]] = []
        self._entries: dict[str, ModelEntry] = {}
        self._epoch = 0  # bumped on every swap
        self._generations: dict[str, int] | None = None
        self._lock = threading.Lock()  # serialises writers; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # --- reading ------------------------------------------------------------------------------
    def cached(self, model: str) -> ModelEntry | None:
        """The model's entry when the table holds it (never blocks)."""
        return self._entries.get(model)

    def entry(self, model: str) -> ModelEntry | None:
        """The model's entry, read from the source on first use (blocking)."""
        found = self._entries.get(model)
        if found is not None:
            return found
        epoch = self._epoch
        found = self.source.entry(model)
        if found is None:
            return None
        with self._lock:
            if epoch == self._epoch and len(self._entries) < self.max_models:
                self._entries = {**self._entries, model: found}
        return found

    @property
    def epoch(self) -> int:
        return self._epoch

    # --- refreshing ---------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read the generations; reload what changed. ``True`` when the entries were swapped."""
        current = {scope: self.source.generation(scope) for scope in (SERVING, CREDENTIALS)}
        previous = self._generations or {}  # no successful read yet: everything may have changed
        if current[CREDENTIALS] != previous.get(CREDENTIALS):
            for callback in self.on_credentials_change:
                callback()
            self._record(CREDENTIALS, current[CREDENTIALS])
        if current[SERVING] == previous.get(SERVING):
            return False
        with self._lock:
            fresh = {}
            for name in list(self._entries):
                entry = self.source.entry(name)  # may raise: nothing recorded, redone next tick
                if entry is not None:
                    fresh[name] = entry
            self._entries = fresh
            self._epoch += 1
            self._record(SERVING, current[SERVING])
        return True

    def _record(self, scope: str, generation: int) -> None:
        """Remember ``scope``'s generation once what it called for is done."""
        self._generations = {**(self._generations or {}), scope: generation}

    def start(self) -> ServingTable:
        """Read the current generations and start the refresh thread."""
        if self._thread is not None:
            return self
        self._stop.clear()
        try:
            self.refresh()
        except Exception:  # the thread retries; until then the table reads on demand
            log.exception("serving table: first refresh failed")
        self._thread = threading.Thread(target=self._run, name="edgefleet-serving-table",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_interval_s):
            try:
                self.refresh()
            except Exception:
                if not self._failing:
                    log.exception("serving table: refresh failed; keeping the entries held")
                self._failing = True
                continue
            if self._failing:
                log.info("serving table: refresh works again")
            self._failing = False
