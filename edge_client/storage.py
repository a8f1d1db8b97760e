"""Crash-safe files and SQLite databases under the agent's data directory.

* :func:`atomic_write` writes a file whole or not at all: a temporary file in the same directory
  (created with ``O_CREAT | O_EXCL`` and the final mode, so a secret is never briefly readable),
  ``fsync``, ``os.replace``, then ``fsync`` of the directory.
* :func:`open_db` opens SQLite in WAL mode with a busy timeout, so the agent (writer) and the
  Flower ClientApp in the SuperNode's process (reader, occasionally writer) can share a file.
* :class:`StateStore` is a small key/value table plus the latest drift summary per model version,
  which the agent writes and ``edgefleet agent status`` and the ClientApp read.

**Degraded but serving.** When a database cannot be opened for writing (a read-only data folder,
a full disk), :class:`Database` does not fail: it copies what the file holds (if it can read it)
into an in-memory database and says so in :attr:`Database.degraded`. What happens next is the
class's ``DEGRADED`` mode: ``"memory"`` (the state and the outbox) keeps working in memory
within the same bounds, lost at exit; ``"readonly"`` (the label store) answers reads and
refuses every write with :class:`~edge_client.errors.StorageUnavailableError`. A ``"memory"``
database whose disk fills up while running moves to memory the same way
(:meth:`Database.to_memory`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_client.errors import DiskFullError, StorageUnavailableError, StoreError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
log = logging.getLogger(__name__)


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` meaning "no space" and for SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


def _mounted_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def cannot_write(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk refuses writes (full, or a read-only file system)."""
    text = str(exc).lower()
    return isinstance(exc, DiskFullError) or "readonly" in text or "read-only" in text


def fsync_dir(path: str | Path) -> None:
    """Make a rename or creation in ``path`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``.

    Raises
    ------
    DiskFullError
        When the disk is full; ``path`` keeps its previous content and no temporary is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed ``mode``; never widen beyond it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise DiskFullError(f"disk full while writing {path}: {exc}") from exc
        raise
    fsync_dir(path.parent)


def open_db(path: str | Path, schema: str) -> sqlite3.Connection:
    """Open (creating if needed) a SQLite database shared across threads and processes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return conn


def _memory_copy(path: Path, schema: str, source: sqlite3.Connection | None = None
                 ) -> sqlite3.Connection:
    """An in-memory database holding what ``source`` (or the file, read as immutable) holds."""
    mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        if source is not None:
            source.backup(mem)
        elif path.is_file():
            src = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
            try:
                src.backup(mem)
            finally:
                src.close()
    except sqlite3.Error:  # unreadable too: start empty
        mem.close()
        mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    mem.executescript(schema)
    return mem


class Database:
    """A SQLite connection guarded by a lock, with ``transaction()`` mapping errors to ours.

    ``DEGRADED`` says what happens when the file cannot be written (see the module notes):
    ``"memory"`` or ``"readonly"``; :attr:`degraded` is ``None`` or why it is degraded.
    """

    DEGRADED = "readonly"

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._lock = threading.RLock()
        self.degraded: str | None = None
        self.read_only = False
        try:
            self._conn = open_db(self.path, schema)
        except StoreError as exc:
            self._conn = _memory_copy(self.path, schema)
            self._set_degraded(str(exc))

    def _set_degraded(self, why: str) -> None:
        self.read_only = self.DEGRADED == "readonly"
        kind = "read-only copy" if self.read_only else "in memory"
        self.degraded = f"{kind}: {why}"
        log.warning("%s is degraded (%s)", self.path.name, self.degraded)

    def to_memory(self, why: str) -> None:
        """Go on in memory (copying the current content) after the disk refused a write."""
        with self._lock:
            if self.degraded is not None:
                return
            old, self._conn = self._conn, _memory_copy(self.path, self._schema, self._conn)
            with contextlib.suppress(sqlite3.Error):
                old.close()
            self._set_degraded(why)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) under the lock.

        Raises, at once, on a read-only degraded database: :class:`StorageUnavailableError`
        when the file system is mounted read-only, :class:`DiskFullError` otherwise (it could
        not even be opened for writing: full).
        """
        if self.read_only:
            message = f"{self.path.name} cannot be written ({self.degraded}); nothing was stored"
            if _mounted_read_only(self.path.parent):
                raise StorageUnavailableError(message)
            raise DiskFullError(message)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise DiskFullError(f"disk full writing {self.path.name}: {exc}") from exc
                raise StoreError(f"{self.path.name}: {exc}") from exc

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement and return every row."""
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path.name}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS drift_snapshot (
    model TEXT NOT NULL, version INTEGER NOT NULL, summary TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (model, version)
);
"""


class StateStore(Database):
    """Small durable facts: last poll, last error, and the latest drift summary per version.

    Degraded (read-only or full disk), it goes on in memory.
    """

    DEGRADED = "memory"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _STATE_SCHEMA)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON can encode) under ``key``."""
        row = (key, json.dumps(value), time.time())
        try:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO kv (key, value, updated) VALUES (?, ?, ?)", row)
        except (DiskFullError, StoreError) as exc:
            if self.degraded is not None or not cannot_write(exc):
                raise
            self.to_memory(str(exc))
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO kv (key, value, updated) VALUES (?, ?, ?)", row)

    def get(self, key: str, default: Any = None) -> Any:
        rows = self.query("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def save_drift(self, model: str, version: int, summary_json: str) -> None:
        """Keep the latest drift summary (JSON) of ``model`` version ``version``."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO drift_snapshot VALUES (?, ?, ?, ?)",
                (model, version, summary_json, time.time()),
            )

    def load_drift(self, model: str, version: int) -> str | None:
        rows = self.query(
            "SELECT summary FROM drift_snapshot WHERE model = ? AND version = ?", (model, version)
        )
        return str(rows[0][0]) if rows else None
