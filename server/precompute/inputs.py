"""Input files of a batch-scoring job: CSV, NPZ or Parquet, read in chunks of rows.

:func:`open_input` picks the reader from the file's suffix (``.csv``, ``.npz``, ``.parquet`` /
``.pq``) and returns an :class:`InputTable`: the rows' count and the file's sha256 (which names
the job, so a restart finds the run it resumes), and :meth:`InputTable.chunks`, which yields
``(keys, features)`` chunks starting at any row.

Columns. The key column (``key_column``) holds the entity keys (any scalar, stored as text).
The features are the plan's ``feature_names`` when the file has all of them (any order, extra
columns ignored); otherwise every other column, in file order, when there are exactly as many as
the plan has features. An NPZ file holds one 1-D array of keys named ``key_column`` and either
one array per feature name or a single 2-D feature array (the only other array, or ``x``).

Parquet needs ``pyarrow`` (the ``broker`` extra), imported only for Parquet files. A file that
cannot be read or does not fit the plan raises :class:`edgefleet.errors.InputError` before any
row is scored.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.plan import PlanManifest

__all__ = ["SUFFIXES", "InputTable", "file_sha256", "open_input"]

SUFFIXES = {".csv": "csv", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
Chunk = tuple[list[str], np.ndarray]


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class InputTable:
    """One input file, checked against the plan's features; read with :meth:`chunks`."""

    path: Path
    kind: str
    key_column: str
    rows: int
    sha256: str
    _columns: list[str]
    _reader: Any

    def chunks(self, size: int, start: int = 0) -> Iterator[Chunk]:
        """``(keys, features float32 [n, n_features])`` of at most ``size`` rows from ``start``."""
        if size < 1:
            raise InputError(f"chunk size must be >= 1, got {size}")
        yield from self._reader(self, size, start)


def open_input(path: str | Path, key_column: str, manifest: PlanManifest) -> InputTable:
    """Open ``path`` for scoring with a plan of ``manifest`` (see the module notes)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path.name}: unknown input format (use {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    opener = {"csv": _open_csv, "npz": _open_npz, "parquet": _open_parquet}[kind]
    try:
        columns, rows, reader = opener(path, key_column, manifest)
    except (OSError, ValueError, csv.Error) as exc:
        raise InputError(f"{path.name}: cannot read it as {kind}: {exc}") from exc
    return InputTable(path, kind, key_column, rows, file_sha256(path), columns, reader)


def feature_columns(names: list[str], key_column: str, manifest: PlanManifest) -> list[str]:
    """The columns holding the plan's features, in the plan's order (see the module notes)."""
    if key_column not in names:
        raise InputError(f"no key column {key_column!r} (columns: {', '.join(names[:10])}…)")
    wanted = list(manifest.input.feature_names)
    if set(wanted) <= set(names):
        return wanted
    others = [n for n in names if n != key_column]
    if len(others) == len(wanted):
        return others
    missing = [n for n in wanted if n not in names]
    raise InputError(
        f"the plan takes {len(wanted)} features; the file has {len(others)} other columns and "
        f"lacks {', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}"
    )


def _floats(rows: list[list[str]], where: int) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=np.float32)
    except ValueError as exc:
        raise InputError(f"rows {where}..{where + len(rows) - 1}: {exc}") from exc


# --- CSV ------------------------------------------------------------------------------------------
def _open_csv(path: Path, key_column: str, manifest: PlanManifest) -> tuple[list[str], int, Any]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path.name} is empty (no header row)")
        rows = sum(1 for _ in reader)
    names = [h.strip() for h in header]
    features = feature_columns(names, key_column, manifest)
    return [key_column, *features], rows, _read_csv


def _read_csv(table: InputTable, size: int, start: int) -> Iterator[Chunk]:
    with table.path.open(newline="") as fh:
        reader = csv.reader(fh)
        names = [h.strip() for h in next(reader)]
        key_at = names.index(table.key_column)
        at = [names.index(c) for c in table._columns[1:]]
        keys: list[str] = []
        values: list[list[str]] = []
        for i, row in enumerate(reader):
            if i < start:
                continue
            if len(row) != len(names):
                raise InputError(f"row {i}: {len(row)} fields, the header has {len(names)}")
            keys.append(row[key_at])
            values.append([row[j] for j in at])
            if len(keys) == size:
                yield keys, _floats(values, i - size + 1)
                keys, values = [], []
        if keys:
            yield keys, _floats(values, table.rows - len(keys))


# --- NPZ ------------------------------------------------------------------------------------------
def _open_npz(path: Path, key_column: str, manifest: PlanManifest) -> tuple[list[str], int, Any]:
    with np.load(path, allow_pickle=False) as npz:
        names = list(npz.files)
        if key_column not in names:
            raise InputError(f"no key array {key_column!r} (arrays: {', '.join(names)})")
        rows = int(npz[key_column].shape[0])
        wanted = list(manifest.input.feature_names)
        if set(wanted) <= set(names):
            return [key_column, *wanted], rows, _read_npz
        others = [n for n in names if n != key_column]
        matrix = "x" if "x" in others else (others[0] if len(others) == 1 else None)
        if matrix is None:
            raise InputError(f"{path.name}: name the feature array 'x' or one array per feature")
        shape = npz[matrix].shape
        if len(shape) != 2 or shape[0] != rows or shape[1] != len(wanted):
            raise InputError(
                f"{path.name}: array {matrix!r} has shape {shape}; expected ({rows}, {len(wanted)})"
            )
    return [key_column, matrix], rows, _read_npz


def _read_npz(table: InputTable, size: int, start: int) -> Iterator[Chunk]:
    with np.load(table.path, allow_pickle=False) as npz:
        keys = npz[table.key_column]
        cols = table._columns[1:]
        x = npz[cols[0]] if len(cols) == 1 else np.stack([npz[c] for c in cols], axis=1)
        for lo in range(start, table.rows, size):
            yield [str(k) for k in keys[lo : lo + size].tolist()], _as_float(x[lo : lo + size], lo)


def _as_float(x: np.ndarray, where: int) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"rows from {where}: features are not numbers: {exc}") from exc


# --- Parquet --------------------------------------------------------------------------------------
def _parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the broker extra
        raise InputError("reading Parquet needs pyarrow (pip install 'edgefleet[broker]')") from exc
    return pq.ParquetFile(path)


def _open_parquet(
    path: Path, key_column: str, manifest: PlanManifest
) -> tuple[list[str], int, Any]:
    pf = _parquet(path)
    names = list(pf.schema_arrow.names)
    features = feature_columns(names, key_column, manifest)
    return [key_column, *features], int(pf.metadata.num_rows), _read_parquet


def _read_parquet(table: InputTable, size: int, start: int) -> Iterator[Chunk]:
    pf = _parquet(table.path)
    seen = 0
    for batch in pf.iter_batches(batch_size=size, columns=table._columns):
        n = batch.num_rows
        if seen + n <= start:
            seen += n
            continue
        skip = max(0, start - seen)
        keys = [str(k) for k in batch.column(0).to_pylist()[skip:]]
        x = np.stack([batch.column(i).to_numpy(zero_copy_only=False)[skip:]
                      for i in range(1, batch.num_columns)], axis=1)
        yield keys, _as_float(x, seen + skip)
        seen += n
