"""The batch-scoring job: score every row of an input file with one version, in committed chunks.

:func:`precompute` resolves the version (a named one, or whatever the alias names when the job
starts), loads it through the server's :class:`~server.inference.service.InferenceService`,
opens the input (:mod:`server.precompute.inputs`), finds or creates the
:class:`registry.models.PrecomputeRun` of this version over these bytes, and then, from the run's
``rows_done`` on, scores ``chunk_size`` rows at a time (one ``predict`` call, the runtime splits
it into interpreter calls of at most 1,024 rows) and commits each chunk's predictions together
with the run's new ``rows_done`` (:func:`registry.predictions.commit_chunk`). Killed at any point,
the job restarted with the same arguments scores only the rows no committed chunk holds: every
key is scored once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from registry.db import session_scope
from registry.models import PrecomputeRun, PrecomputeStatus
from registry.predictions import commit_chunk, finish_run, resolve_version, start_run
from server.inference.service import InferenceService
from server.precompute.inputs import InputTable, open_input
from server.precompute.resolve import target_of

__all__ = ["DEFAULT_CHUNK_SIZE", "PrecomputeReport", "precompute"]

DEFAULT_CHUNK_SIZE = 1000


@dataclass(frozen=True)
class PrecomputeReport:
    """What one :func:`precompute` call did.

    Attributes
    ----------
    run_id, model, version, alias
        The run, and the version it scored with (``alias``: the alias that named it, if any).
    rows_total
        Rows in the input.
    rows_scored
        Rows this call scored and committed.
    rows_resumed
        Rows a previous, interrupted call had committed (skipped).
    seconds
        Wall time of the scoring loop.
    """

    run_id: int
    model: str
    version: int
    alias: str | None
    rows_total: int
    rows_scored: int
    rows_resumed: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_scored / self.seconds if self.seconds > 0 else float("nan")


def precompute(
    engine: Engine,
    service: InferenceService,
    model: str,
    input_path: str | Path,
    key_column: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    restart: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> PrecomputeReport:
    """Score ``input_path`` with ``model`` (see the module notes).

    Parameters
    ----------
    version, alias
        The version to run, or the alias naming it (default ``production``), resolved once.
    chunk_size
        Rows scored and committed together (default 1,000).
    restart
        Score a finished run's input again from the first row.
    on_start
        Called with ``(rows_total, rows_already_committed)`` before scoring.
    on_chunk
        Called with the number of rows of each committed chunk (a progress bar).
    """
    with session_scope(engine) as session:
        target = target_of(resolve_version(session, model, version=version, alias=alias))
    runtime = service.runtime(target)
    table = open_input(input_path, key_column, runtime.manifest)
    with session_scope(engine, write=True) as session:
        resolved = resolve_version(session, model, version=target.version)
        run = start_run(
            session,
            resolved,
            input_name=str(Path(input_path).resolve()),
            input_sha256=table.sha256,
            key_column=key_column,
            rows_total=table.rows,
            restart=restart,
        )
    resumed = run.rows_done
    if on_start is not None:
        on_start(table.rows, resumed)
    started = time.perf_counter()
    if run.status != PrecomputeStatus.DONE:
        labels = np.asarray(runtime.manifest.output.class_labels)
        _score(engine, run, table, chunk_size, runtime.predict, labels, on_chunk)
    return PrecomputeReport(
        run_id=run.id or 0,
        model=model,
        version=target.version,
        alias=target.alias,
        rows_total=table.rows,
        rows_scored=run.rows_done - resumed,
        rows_resumed=resumed,
        seconds=time.perf_counter() - started,
    )


def _score(
    engine: Engine,
    run: PrecomputeRun,
    table: InputTable,
    chunk_size: int,
    predict: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    on_chunk: Callable[[int], None] | None,
) -> None:
    for keys, x in table.chunks(chunk_size, start=run.rows_done):
        probs = predict(x)
        with session_scope(engine, write=True) as session:
            commit_chunk(session, run, keys, labels[np.argmax(probs, axis=1)].tolist(),
                         probs.tolist())
        if on_chunk is not None:
            on_chunk(len(keys))
    with session_scope(engine, write=True) as session:
        finish_run(session, run)
