"""The bounded local store of labelled examples (SQLite), for local training and evaluation.

Applications hand the agent labelled examples (``Agent.record_label(x, y)`` or
``POST /v1/labels`` on the local endpoint); they are kept here, on the device only — raw
features never leave it. The store is bounded: past ``max_examples`` rows, the oldest are evicted
in the same transaction as the insert, so the bound holds even across crashes.

Features are stored as little-endian float32 blobs with their per-example shape; labels as class
indices of the model they were recorded for. The database is in WAL mode so the Flower ClientApp
(in the SuperNode's process) can read it while the agent writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edge_client.errors import InvalidInputError
from edge_client.storage import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    shape TEXT NOT NULL,
    x BLOB NOT NULL,
    y INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_model ON examples (model, id);
"""


class LabelStore(Database):
    """Labelled examples, oldest evicted first beyond ``max_examples``.

    Parameters
    ----------
    path : Path
        The SQLite file (``<data_dir>/labels.sqlite3``).
    max_examples : int
        Most examples kept over all models (default 10000).
    """

    def __init__(self, path: str | Path, max_examples: int = 10_000) -> None:
        super().__init__(path, _SCHEMA)
        if max_examples < 1:
            raise ValueError("max_examples must be >= 1")
        self.max_examples = max_examples

    def add(self, model: str, x: np.ndarray, y: np.ndarray) -> int:
        """Store examples ``x[i]`` with class indices ``y[i]``; return how many were stored.

        Raises
        ------
        InvalidInputError
            ``x`` and ``y`` differ in length, ``x`` has NaN/inf, or ``y`` is not integral.
        """
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise InvalidInputError(
                f"labels: x must be [n, ...] and y [n]; got {list(x.shape)} and {list(y.shape)}"
            )
        if not np.all(np.isfinite(x)):
            raise InvalidInputError("labels: features contain NaN/inf")
        if y.size and not (np.issubdtype(y.dtype, np.integer) or np.all(y == np.round(y))):
            raise InvalidInputError(f"labels: y must be class indices, got dtype {y.dtype}")
        shape = json.dumps(list(x.shape[1:]))
        now = time.time()
        rows = [(model, now, shape, x[i].astype("<f4").tobytes(), int(y[i]))
                for i in range(x.shape[0])]
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO examples (model, created, shape, x, y) VALUES (?, ?, ?, ?, ?)", rows
            )
            db.execute(
                "DELETE FROM examples WHERE id NOT IN "
                "(SELECT id FROM examples ORDER BY id DESC LIMIT ?)", (self.max_examples,)
            )
        return len(rows)

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self.query("SELECT COUNT(*) FROM examples")[0][0])
        return int(self.query("SELECT COUNT(*) FROM examples WHERE model = ?", (model,))[0][0])

    def load(
        self, model: str, sample_shape: tuple[int, ...], *, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``limit`` (default all) examples of ``model`` whose shape is
        ``sample_shape``, oldest first: ``(x float32 [n, *sample_shape], y int64 [n])``."""
        sql = ("SELECT x, y FROM examples WHERE model = ? AND shape = ? ORDER BY id DESC"
               + (" LIMIT ?" if limit is not None else ""))
        params: tuple[object, ...] = (model, json.dumps(list(sample_shape)))
        rows = self.query(sql, params + ((limit,) if limit is not None else ()))
        rows.reverse()
        x = np.empty((len(rows), *sample_shape), dtype=np.float32)
        for i, (blob, _) in enumerate(rows):
            x[i] = np.frombuffer(blob, dtype="<f4").reshape(sample_shape)
        y = np.asarray([r[1] for r in rows], dtype=np.int64)
        return x, y

    def clear(self, model: str | None = None) -> int:
        """Delete the examples of ``model`` (or all); return how many."""
        with self.transaction() as db:
            if model is None:
                cur = db.execute("DELETE FROM examples")
            else:
                cur = db.execute("DELETE FROM examples WHERE model = ?", (model,))
            return int(cur.rowcount)
