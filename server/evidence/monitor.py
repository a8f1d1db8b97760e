"""Per-version monitoring of one model over a time window, computed in the database.

:func:`monitor` runs three ``GROUP BY`` queries over ``inference_record`` (requests, errors
and the latency histogram; the prediction distribution; labelled accuracy per time window) and
combines their few aggregated rows in Python; no logged row is loaded.

Definitions (what the brute-force test recomputes):

* ``requests`` counts records with ``row_index`` 0; ``errors`` those with a status >= 400;
  ``error_rate`` is their ratio (``None`` without requests).
* Latency quantiles are nearest-rank (rank ``ceil(q·n)``) over the requests' latencies,
  reported as the upper edge of their 2 %-wide bucket (:func:`registry.evidence.bucket_upper_ms`).
* ``predictions`` counts answered instances (status < 400) per predicted label; ``shift`` is the
  population stability index (:func:`edgefleet.drift.compare.psi`) of that distribution against
  the ``against`` version's over the union of their labels (the version with most requests when
  ``against`` is not given).
* ``accuracy`` is correct / labelled over instances with a true label (REST feedback), overall
  and per ``window_s`` window of ``created_at`` counted from ``since``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import Session

from edgefleet.drift.compare import psi
from registry.evidence import TABLE, bucket_upper_ms

__all__ = ["QUANTILES", "AccuracyWindow", "MonitorReport", "VersionMonitor", "monitor"]

#: Latency quantiles reported.
QUANTILES = (0.5, 0.9, 0.95, 0.99)


class AccuracyWindow(BaseModel):
    start: datetime
    labelled: int
    correct: int
    accuracy: float


class VersionMonitor(BaseModel):
    """The figures of one version (see the module notes)."""

    version: int
    requests: int
    errors: int
    error_rate: float | None
    latency_ms: dict[str, float]
    predictions: dict[str, int]
    shift: float | None
    labelled: int
    correct: int
    accuracy: float | None
    accuracy_windows: list[AccuracyWindow]


class MonitorReport(BaseModel):
    model: str
    since: datetime
    until: datetime
    window_s: int
    against: int | None
    versions: list[VersionMonitor]


def _epoch(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.BigInteger)
    return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)


def nearest_rank(hist: list[tuple[int, int]], q: float) -> float:
    """The upper edge of the bucket holding the ``ceil(q·n)``-th value of ``hist``."""
    n = sum(count for _, count in hist)
    rank = max(1, math.ceil(q * n))
    seen = 0
    for bucket, count in sorted(hist):
        seen += count
        if seen >= rank:
            return bucket_upper_ms(bucket)
    raise ValueError("empty histogram")


def _shift(p: dict[str, int], q: dict[str, int]) -> float | None:
    if not p or not q:
        return None
    labels = sorted(set(p) | set(q))
    return float(psi(np.array([p.get(k, 0) for k in labels], dtype=np.float64),
                     np.array([q.get(k, 0) for k in labels], dtype=np.float64)))


def monitor(
    session: Session,
    model: str,
    since: datetime,
    until: datetime,
    *,
    against: int | None = None,
    window_s: int = 3600,
) -> MonitorReport:
    """Per-version figures of ``model`` for records created in ``[since, until)``."""
    c = TABLE.c
    where = (c.model == model, c.created_at >= since, c.created_at < until)
    first = (*where, c.row_index == 0)
    hist: dict[int, list[tuple[int, int]]] = {}
    totals: dict[int, list[int]] = {}
    for version, bucket, count, errors in session.execute(
        sa.select(c.version, c.latency_bucket, sa.func.count(),
                  sa.func.sum(sa.case((c.status >= 400, 1), else_=0)))
        .where(*first).group_by(c.version, c.latency_bucket)
    ):
        hist.setdefault(version, []).append((bucket, count))
        t = totals.setdefault(version, [0, 0])
        t[0] += count
        t[1] += int(errors or 0)
    req = [(v, n, e) for v, (n, e) in totals.items()]
    preds: dict[int, dict[str, int]] = {}
    for version, label, count in session.execute(
        sa.select(c.version, c.label, sa.func.count())
        .where(*where, c.status < 400, c.label.is_not(None)).group_by(c.version, c.label)
    ):
        preds.setdefault(version, {})[label] = count
    windows = _accuracy(session, where, since, window_s)
    if against is None and req:
        against = max(req, key=lambda r: (r[1], -r[0]))[0]
    versions = []
    for version, requests, errors in sorted(req):
        acc = windows.get(version, [])
        labelled = sum(w.labelled for w in acc)
        correct = sum(w.correct for w in acc)
        versions.append(VersionMonitor(
            version=version,
            requests=requests,
            errors=int(errors or 0),
            error_rate=(errors or 0) / requests if requests else None,
            latency_ms={f"p{round(q * 100)}": nearest_rank(hist[version], q) for q in QUANTILES},
            predictions=dict(sorted(preds.get(version, {}).items())),
            shift=None if against is None else _shift(preds.get(version, {}),
                                                       preds.get(against, {})),
            labelled=labelled,
            correct=correct,
            accuracy=correct / labelled if labelled else None,
            accuracy_windows=acc,
        ))
    return MonitorReport(model=model, since=since, until=until, window_s=window_s,
                         against=against, versions=versions)


def _accuracy(
    session: Session, where: tuple[Any, ...], since: datetime, window_s: int
) -> dict[int, list[AccuracyWindow]]:
    c = TABLE.c
    base = int(since.timestamp())
    index = (_epoch(session, c.created_at) - base) // window_s  # integer (floor) division
    rows = session.execute(
        sa.select(c.version, index.label("w"), sa.func.count(),
                  sa.func.sum(sa.case((c.label == c.true_label, 1), else_=0)))
        .where(*where, c.true_label.is_not(None), c.status < 400)
        .group_by(c.version, "w").order_by(c.version, "w")
    ).all()
    out: dict[int, list[AccuracyWindow]] = {}
    for version, w, labelled, correct in rows:
        out.setdefault(version, []).append(AccuracyWindow(
            start=since + timedelta(seconds=int(w) * window_s),
            labelled=labelled, correct=int(correct or 0),
            accuracy=int(correct or 0) / labelled,
        ))
    return out
