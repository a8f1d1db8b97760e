"""The inference log's inserts in a process of their own, so that they never hold the server's GIL.

The writer thread of :class:`server.evidence.writer.InferenceLog` batches answers while the
event loop serves; turning a batch into records and inserting them (hashes, bound values, the
rollups' tally, SQLite's own work) costs several times what serving a tiny model's request
does, and in the server's process every microsecond of it is taken from the event loop, which
waits for the GIL meanwhile. With :class:`WriterProcess`, the thread only packs each batch into
columns (:func:`pack`: a list per field, the inputs and probabilities stacked into one array
each, pickled) and sends it over a socket pair to a child Python process (:func:`main`), which
rebuilds the answers (:func:`unpack`) and writes them with
:func:`server.evidence.records.write_batch`, the thread's own insert with its retries, then
answers whether the batch was stored.

The child is started by the writer thread as it starts (before the first batch, so that its
start is not paid while the server serves), runs at a lower scheduling priority (``NICE``),
connects to the same database (the URL travels over the socket, never on its command line),
logs in the server's format, and exits when the socket closes (the server stopped or died). A
batch is settled only when the child has answered, so :meth:`InferenceLog.flush` and the loss
bound are as without it; should the child die, the thread writes that batch and every later one
itself (inserts skip records already stored, so a batch the child stored before dying is not
stored twice).
"""

from __future__ import annotations

import logging
import operator
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from server.child import ChildProcess
from server.evidence.records import Answer, write_batch

__all__ = ["ProcessSpec", "WriterProcess", "WriterProcessError", "pack", "unpack"]

log = logging.getLogger("edgefleet.server.evidence")

#: The child's program: :func:`main` on the socket's descriptor (run with ``-c``: as ``-m`` the
#: module would be imported twice, once by its package and once as ``__main__``).
_CHILD = ("import os, sys; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3'); "
          "from server.evidence.writer_process import main; sys.exit(main(int(sys.argv[1])))")
#: How much lower the child's scheduling priority is than the server's (``nice``): when the
#: cores are busy, serving requests comes first and the queue absorbs the delay.
NICE = 10
#: How long the child may take to start (import, connect) before the thread writes itself.
START_TIMEOUT_S = 60.0
#: How long one batch may take in the child (its retries included) before it is given up on.
BATCH_TIMEOUT_S = 120.0

_SCALARS = ("request_id", "model", "version", "alias", "caller", "status", "latency_ms",
            "variant", "labels", "sampled")
_GET = [operator.attrgetter(name) for name in _SCALARS]
_X, _PROBS, _CREATED = (operator.attrgetter(n) for n in ("x", "probs", "created_at"))


class WriterProcessError(RuntimeError):
    """The child process did not start, went away, or did not answer in time."""


@dataclass(frozen=True)
class ProcessSpec:
    """What the child needs: the database's URL and the server's log level and format."""

    database_url: str
    log_level: str = "INFO"
    log_format: str = "json"


# --- the batch on the wire -------------------------------------------------------------------
def pack(batch: Sequence[Answer]) -> bytes:
    """``batch`` as pickled columns: one list per scalar field; ``created_at`` as POSIX seconds
    when every value is a UTC time (else the times themselves); inputs and probabilities as one
    stacked array each when every answer has 2-D ones of one width (else as they are)."""
    columns = [list(map(get, batch)) for get in _GET]
    created: list[Any] = list(map(_CREATED, batch))
    as_seconds = all(t.tzinfo is UTC for t in created)
    if as_seconds:
        created = list(map(datetime.timestamp, created))
    return pickle.dumps((columns, as_seconds, created, _stacked(list(map(_X, batch))),
                         _stacked(list(map(_PROBS, batch)))), protocol=5)


def unpack(data: bytes) -> list[Answer]:
    """The answers :func:`pack` packed (rows of the stacked arrays are views of them)."""
    columns, as_seconds, created, xs, probs = pickle.loads(data)
    if as_seconds:
        created = [datetime.fromtimestamp(s, UTC) for s in created]
    fields = dict(zip(_SCALARS, columns, strict=True))
    n = len(created)
    return [Answer(request_id=fields["request_id"][i], created_at=created[i],
                   model=fields["model"][i], version=fields["version"][i],
                   alias=fields["alias"][i], caller=fields["caller"][i],
                   status=fields["status"][i], latency_ms=fields["latency_ms"][i],
                   variant=fields["variant"][i], x=x, probs=p, labels=fields["labels"][i],
                   sampled=fields["sampled"][i])
            for i, x, p in zip(range(n), _unstacked(xs, n), _unstacked(probs, n), strict=True)]


def _stacked(arrays: list[Any]) -> tuple[np.ndarray, list[int]] | list[Any]:
    """``arrays`` as one array and each one's row count, when all are 2-D of one width and
    dtype; else as they are."""
    if arrays and all(isinstance(a, np.ndarray) and a.ndim == 2 for a in arrays):
        first = arrays[0]
        if all(a.shape[1] == first.shape[1] and a.dtype == first.dtype for a in arrays):
            return np.concatenate(arrays), [len(a) for a in arrays]
    return arrays


def _unstacked(packed: tuple[np.ndarray, list[int]] | list[Any], n: int) -> list[Any]:
    if isinstance(packed, list):
        return packed
    whole, counts = packed
    ends = np.cumsum(counts).tolist()
    return [whole[end - k : end] for end, k in zip(ends, counts, strict=True)][:n]


# --- the server's side -----------------------------------------------------------------------
class WriterProcess(ChildProcess):
    """The child process that writes the inference log's batches (see the module notes)."""

    def __init__(self, spec: ProcessSpec) -> None:
        super().__init__()
        self.spec = spec

    def start(self) -> None:
        """Start the child and wait until it is connected to the database."""
        try:
            conn = self._spawn(_CHILD)
        except OSError as exc:
            raise WriterProcessError(f"cannot start the writer process: {exc}") from exc
        conn.send(self.spec)
        self._reply(START_TIMEOUT_S, "start")

    def write(self, batch: Sequence[Answer]) -> bool:
        """Have the child store ``batch``: ``True`` when stored, ``False`` when the database
        refused it on every attempt."""
        if self._conn is None:
            self.start()
        assert self._conn is not None
        try:
            self._conn.send_bytes(pack(batch))
        except OSError as exc:
            self.stop()
            raise WriterProcessError(f"the writer process went away: {exc}") from exc
        return bool(self._reply(BATCH_TIMEOUT_S, "write"))

    def _reply(self, timeout: float, doing: str) -> Any:
        assert self._conn is not None
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
            reason = f"no answer within {timeout:g} s"
        except (EOFError, OSError) as exc:
            reason = f"it exited ({exc or 'connection closed'})"
        self.stop(timeout=1.0)
        raise WriterProcessError(f"the writer process failed to {doing}: {reason}")


# --- the child -------------------------------------------------------------------------------
def main(fd: int) -> int:
    """The child: write every batch received on ``fd`` until it closes."""
    from registry.db import make_engine
    from server.logs import configure_logging

    os.nice(NICE)  # background work: the server's requests come first when the cores are busy
    conn = Connection(fd)
    spec: ProcessSpec = conn.recv()
    configure_logging(spec.log_level, spec.log_format)
    engine = make_engine(spec.database_url, pool_size=1)
    try:
        with engine.connect():
            pass  # connected: the server may send batches
        conn.send(True)
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return 0
            conn.send(write_batch(engine, unpack(data)))
    finally:
        engine.dispose()
