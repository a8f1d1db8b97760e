"""The on-disk telemetry outbox (SQLite): nothing the device must report is lost to a restart
or a long offline period, and its size stays bounded.

Each entry is one report body (JSON) with its idempotency key, fixed when the report is built and
kept across every retry, so the server can recognise a report it already received whose
acknowledgement was lost. Sending is the caller's job (:class:`edge_client.telemetry.Telemetry`);
the outbox schedules it:

* :meth:`Outbox.due` lists entries whose next attempt has come, oldest first;
* :meth:`Outbox.sent` deletes an acknowledged entry;
* :meth:`Outbox.failed` schedules the next attempt after ``min(max, base * 2**attempts)``
  seconds times a uniform jitter in ``[0.5, 1.5]``.

At the bound (``max_entries``), :meth:`Outbox.put` first *merges* the two oldest entries of the
same kind and model version that were never attempted (an attempted entry may already be on the
server, so merging it could count it twice), with the ``merge`` function given (drift summaries
merge associatively); when no such pair exists it *drops* the oldest entry and counts it. The
count is handed to the next report (``dropped_reports``) through :meth:`Outbox.pending_dropped`
and ``put(..., consumes_dropped=n)``, in the same transaction that stores that report.

On a read-only data folder, or once the disk is full, the outbox goes on **in memory** (a copy
of what the file held) with the same bound, merging and dropping (:attr:`Outbox.degraded`
says why): telemetry is still sent while the process runs and is lost at exit.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_client.errors import DiskFullError, StoreError
from edge_client.storage import Database, cannot_write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
Merge = Callable[[str, str], str]


@dataclass(frozen=True)
class OutboxEntry:
    """One queued report."""

    key: str
    kind: str
    model: str
    version: int
    body: str
    created: float
    attempts: int
    next_attempt: float
    last_error: str | None


class Outbox(Database):
    """A bounded, durable queue of reports with retry scheduling (in memory when degraded).

    Parameters
    ----------
    path : Path
        The SQLite file (``<data_dir>/outbox.sqlite3``).
    max_entries : int
        The bound (default 500).
    backoff_base_s, backoff_max_s : float
        Retry schedule (defaults 5 s and 1 h).
    merge : callable or None
        ``merge(older_body, newer_body) -> body`` for entries of the same kind and model version;
        ``None`` means entries are only ever dropped.
    """

    DEGRADED = "memory"

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = 500,
        backoff_base_s: float = 5.0,
        backoff_max_s: float = 3600.0,
        merge: Merge | None = None,
    ) -> None:
        super().__init__(path, _SCHEMA)
        if max_entries < 2:
            raise ValueError("max_entries must be >= 2")
        self.max_entries = max_entries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.merge = merge

    # --- writing -------------------------------------------------------------------------------
    def put(
        self, key: str, kind: str, model: str, version: int, body: str, *,
        consumes_dropped: int = 0, now: float | None = None,
    ) -> None:
        """Queue a report (making room first), and subtract ``consumes_dropped`` from the
        pending dropped count (the number this report carries as ``dropped_reports``)."""
        now = time.time() if now is None else now
        try:
            self._put(key, kind, model, version, body, consumes_dropped, now)
        except (DiskFullError, StoreError) as exc:
            if self.degraded is not None or not cannot_write(exc):
                raise
            self.to_memory(str(exc))
            self._put(key, kind, model, version, body, consumes_dropped, now)

    def _put(self, key: str, kind: str, model: str, version: int, body: str,
             consumes_dropped: int, now: float) -> None:
        with self.transaction() as db:
            while db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] >= self.max_entries:
                if not self._merge_oldest_pair(db):
                    oldest = db.execute("SELECT id FROM outbox ORDER BY id LIMIT 1").fetchone()
                    db.execute("DELETE FROM outbox WHERE id = ?", (oldest[0],))
                    self._bump(db, "dropped", 1)
                    self._bump(db, "dropped_total", 1)
            db.execute(
                "INSERT INTO outbox (key, kind, model, version, body, created, next_attempt) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, kind, model, version, body, now, now),
            )
            if consumes_dropped:
                self._bump(db, "dropped", -consumes_dropped)

    def _merge_oldest_pair(self, db: sqlite3.Connection) -> bool:
        if self.merge is None:
            return False
        rows = db.execute(
            "SELECT id, kind, model, version, body FROM outbox WHERE attempts = 0 ORDER BY id"
        ).fetchall()
        first: dict[tuple[str, str, int], tuple[int, str]] = {}
        for row_id, kind, model, version, body in rows:
            group = (kind, model, version)
            if group in first:
                older_id, older_body = first[group]
                db.execute("UPDATE outbox SET body = ? WHERE id = ?",
                           (self.merge(older_body, body), older_id))
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._bump(db, "merged_total", 1)
                return True
            first[group] = (row_id, body)
        return False

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, delta: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, MAX(?, 0)) "
            "ON CONFLICT(name) DO UPDATE SET value = MAX(value + ?, 0)", (name, delta, delta),
        )

    def sent(self, key: str) -> None:
        """The server acknowledged ``key``: forget it."""
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE key = ?", (key,))

    def failed(self, key: str, error: str, *, now: float | None = None) -> float:
        """Record a failed attempt; return when the next one is due (epoch seconds)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT attempts FROM outbox WHERE key = ?", (key,)).fetchone()
            if row is None:
                return now
            attempts = int(row[0]) + 1
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1))
            due = now + delay * random.uniform(0.5, 1.5)
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE key = ?",
                (attempts, due, error[:500], key),
            )
        return due

    def discard(self, key: str) -> None:
        """Give up on ``key`` (the server refused it for good); it counts as dropped."""
        with self.transaction() as db:
            if db.execute("DELETE FROM outbox WHERE key = ?", (key,)).rowcount:
                self._bump(db, "dropped", 1)
                self._bump(db, "dropped_total", 1)

    # --- reading -------------------------------------------------------------------------------
    def due(self, *, now: float | None = None, limit: int = 50) -> list[OutboxEntry]:
        """Entries whose next attempt has come, oldest first."""
        now = time.time() if now is None else now
        rows = self.query(
            "SELECT key, kind, model, version, body, created, attempts, next_attempt, last_error "
            "FROM outbox WHERE next_attempt <= ? ORDER BY id LIMIT ?", (now, limit),
        )
        return [OutboxEntry(*row) for row in rows]

    def entries(self) -> list[OutboxEntry]:
        """Every queued entry, oldest first."""
        return self.due(now=float("inf"), limit=-1)

    def depth(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM outbox")[0][0])

    def counter(self, name: str) -> int:
        """``dropped`` (not yet reported), ``dropped_total`` or ``merged_total``."""
        rows = self.query("SELECT value FROM counters WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def pending_dropped(self) -> int:
        """Entries dropped since the last report that carried the count."""
        return self.counter("dropped")
