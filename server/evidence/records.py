"""What the inference log stores of an answer: :class:`Answer`, its records, and writing a batch.

:class:`Answer` is one V2 request as answered (or refused); :func:`rows` turns a batch of them
into the records of ``inference_record`` (one per input row, or one without outputs for a
refusal: the input's SHA-256, the top label and its confidence, the inputs when sampled), and
:func:`write_batch` inserts a batch in one transaction, retried, skipping records already stored
(:func:`registry.evidence.insert_rows`, which also counts them into the rollups). The writer
(:mod:`server.evidence.writer`) and its child process (:mod:`server.evidence.writer_process`)
both write through it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry.evidence import insert_rows, latency_bucket

__all__ = ["ATTEMPTS", "COLUMNS", "Answer", "records", "rows", "write_batch"]

log = logging.getLogger("edgefleet.server.evidence")

#: Transactions a batch is tried in before it is given up on (0.2 s, then 0.4 s apart).
ATTEMPTS = 3

@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs the request path
class Answer:
    """One V2 request as answered (or refused): what :meth:`InferenceLog.submit` takes.

    ``x``, ``probs`` and ``labels`` are ``None`` for a refused request (status >= 400).
    """

    request_id: str
    created_at: datetime
    model: str
    version: int
    alias: str | None
    caller: str
    status: int
    latency_ms: float
    variant: str | None = None
    x: np.ndarray | None = None
    probs: np.ndarray | None = None
    labels: list[str] | None = None
    sampled: bool = False


#: The columns of the rows :func:`rows` builds, in their order.
COLUMNS = ("request_id", "row_index", "created_at", "model", "version", "alias", "variant",
           "caller", "status", "latency_ms", "latency_bucket", "label", "confidence",
           "input_sha256", "inputs")


def rows(batch: Sequence[Answer]) -> list[tuple[Any, ...]]:
    """The records of ``batch`` as tuples of :data:`COLUMNS`: one per input row of an answer,
    or one without outputs for a refusal.

    A batch of one-row answers, none refused or sampled (the common case), is built a column at
    a time (:func:`_single_rows`); any other batch has one head tuple per answer, the
    confidences one ``max`` per output width over the answers' probabilities stacked, and the
    input hashes one ``tobytes`` per input width.
    """
    fast = _single_rows(batch)
    if fast is not None:
        return fast
    answered = [a for a in batch if _answered(a)]
    confidence, digests = _outputs(answered)
    out: list[tuple[Any, ...]] = []
    k = 0  # index of the next answered row in confidence / digests
    for a in batch:
        head = (a.created_at, a.model, a.version, a.alias, a.variant[:64] if a.variant else None,
                a.caller, a.status, a.latency_ms, latency_bucket(a.latency_ms))
        labels = a.labels
        if labels is None or not _answered(a):
            out.append((a.request_id, 0, *head, None, None, None, None))
            continue
        x = _inputs(a) if a.sampled else None
        for i, label in enumerate(labels):
            out.append((a.request_id, i, *head, label, confidence[k], digests[k],
                        None if x is None else x[i].tolist()))
            k += 1
    return out


_FIELDS = {name: operator.attrgetter(name) for name in (
    "request_id", "created_at", "model", "version", "alias", "variant", "caller", "status",
    "latency_ms", "x", "probs", "labels", "sampled")}
_HEX = operator.methodcaller("hexdigest")


def _single_rows(batch: Sequence[Answer]) -> list[tuple[Any, ...]] | None:
    """:func:`rows` of a batch of refusals and of answered, unsampled one-row answers whose
    inputs and probabilities are rows of one width each, built a column at a time (attribute
    getters, one ``concatenate`` and ``max``, a SHA-256 per row); ``None`` for any other
    batch."""
    n = len(batch)
    if not n:
        return []
    ok = [a.status < 400 and a.labels is not None and a.x is not None and a.probs is not None
          for a in batch]
    every = all(ok)
    answered = batch if every else [a for a, k in zip(batch, ok, strict=True) if k]
    f = _FIELDS
    labels = list(map(f["labels"], answered))
    if any(map(f["sampled"], answered)) or (labels and set(map(len, labels)) != {1}):
        return None
    try:
        x = np.concatenate(list(map(f["x"], answered)), dtype=np.float32) if labels else None
        p = np.concatenate(list(map(f["probs"], answered))) if labels else None
    except (ValueError, TypeError):  # widths or dimensions differ: the general path
        return None
    if x is not None and p is not None:
        m = len(answered)
        if x.ndim != 2 or p.ndim != 2 or x.shape[0] != m or p.shape[0] != m:
            return None
        outputs: list[Any] = [list(map(operator.itemgetter(0), labels)), p.max(axis=1).tolist(),
                              list(map(_HEX, map(hashlib.sha256, x)))]
    else:
        outputs = [[], [], []]
    if not every:  # a refusal's row has no outputs
        outputs = [_spread(column, ok) for column in outputs]
    variants = list(map(f["variant"], batch))
    if any(v is not None and (len(v) > 64 or not v) for v in variants):
        variants = [v[:64] if v else None for v in variants]
    latencies = list(map(f["latency_ms"], batch))
    return list(zip(
        map(f["request_id"], batch), itertools.repeat(0, n), map(f["created_at"], batch),
        map(f["model"], batch), map(f["version"], batch), map(f["alias"], batch), variants,
        map(f["caller"], batch), map(f["status"], batch), latencies,
        map(latency_bucket, latencies), *outputs, itertools.repeat(None, n), strict=True))


def _spread(values: list[Any], present: list[bool]) -> list[Any]:
    """``values`` at the places ``present`` marks, ``None`` elsewhere."""
    it = iter(values)
    return [next(it) if k else None for k in present]


def records(answer: Answer) -> list[dict[str, Any]]:
    """The rows of ``answer`` as column → value dicts (what :func:`rows` gives, by name)."""
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows([answer])]


def _answered(a: Answer) -> bool:
    return a.status < 400 and a.labels is not None and a.x is not None and a.probs is not None


def _inputs(a: Answer) -> np.ndarray:
    """``a.x`` as float32 rows, one per label."""
    return _rows_of(a.x, len(a.labels or ())).astype(np.float32, copy=False)


def _rows_of(values: Any, n: int) -> np.ndarray:
    """``values`` as a 2-D array of ``n`` rows (as it comes, when it already is one)."""
    arr = np.asarray(values)
    return arr if arr.ndim == 2 and arr.shape[0] == n else arr.reshape(n, -1)


def _outputs(answered: list[Answer]) -> tuple[list[float], list[str]]:
    """Per answered row of ``answered`` (in order): its confidence and its input's SHA-256."""
    n = sum(len(a.labels or ()) for a in answered)
    confidence: list[float] = [0.0] * n
    digests: list[str] = [""] * n
    offsets, at = [], 0
    for a in answered:
        offsets.append(at)
        at += len(a.labels or ())
    by_width: dict[tuple[int, int], list[int]] = {}
    xs = [_rows_of(a.x, len(a.labels or ())) for a in answered]
    ps = [_rows_of(a.probs, len(a.labels or ())) for a in answered]
    for j, (x, p) in enumerate(zip(xs, ps, strict=True)):
        by_width.setdefault((x.shape[1], p.shape[1]), []).append(j)
    sha256 = hashlib.sha256
    for members in by_width.values():
        conf = np.concatenate([ps[j] for j in members]).max(axis=1).tolist()
        raw = np.concatenate([xs[j] for j in members], dtype=np.float32).tobytes()
        width = xs[members[0]].shape[1] * 4  # float32: row r's bytes are raw[r*width:(r+1)*width]
        r = 0
        for j in members:
            at = offsets[j]
            for i in range(xs[j].shape[0]):
                confidence[at + i] = conf[r]
                digests[at + i] = sha256(raw[r * width : (r + 1) * width]).hexdigest()
                r += 1
    return confidence, digests


def write_batch(engine: Engine, batch: Sequence[Answer]) -> bool:
    """Insert the records of ``batch`` in one transaction, tried up to :data:`ATTEMPTS` times;
    whether it was stored (records already stored are skipped, so a retry stores nothing
    twice)."""
    built = rows(batch)
    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as conn:
                insert_rows(conn, COLUMNS, built)
        except SQLAlchemyError as exc:
            log.warning("inference log: batch of %d not written (%s)", len(batch), exc)
            if attempt + 1 < ATTEMPTS:
                time.sleep(0.2 * 2**attempt)
            continue
        return True
    return False
