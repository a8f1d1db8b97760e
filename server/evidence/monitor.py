"""Per-version monitoring of one model over a time window, computed in the database.

:func:`monitor` runs three ``GROUP BY`` queries (requests, errors and the latency histogram; the
prediction distribution; labelled accuracy per time window) over the rollups
(:mod:`registry.rollups`): the hourly request rollups for the whole hours of the window and the
minute prediction rollups for its whole minutes; the same queries over ``inference_record``
answer the rest, one index range per interval: the partial hours (requests) and minutes
(predictions) at either end, and each minute that a ``window_s`` boundary cuts. It combines
their few aggregated rows in Python; no logged row is loaded. The figures are those of the
records themselves (a test compares them with a brute-force computation).

Figures are per version (every variant merged, ``versions``) and per version and rollout
variant (``variants``, only for records that name a variant).

Definitions (what the brute-force test recomputes):

* ``requests`` counts records with ``row_index`` 0; ``errors`` those with a status >= 400,
  ``server_errors`` those with a status >= 500 (so ``errors - server_errors`` are 4xx);
  ``error_rate`` is errors / requests (``None`` without requests).
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
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import Session

from edgefleet.drift.compare import psi
from registry.evidence import TABLE, bucket_upper_ms
from registry.models.evidence import LATENCY_ROLLUP_S, ROLLUP_BUCKET_S
from registry.rollups import INFERENCE_ROLLUP, PREDICTION_ROLLUP, bucket_ceil, bucket_floor

__all__ = ["QUANTILES", "AccuracyWindow", "MonitorReport", "VersionMonitor", "monitor"]

#: Latency quantiles reported.
QUANTILES = (0.5, 0.9, 0.95, 0.99)


class AccuracyWindow(BaseModel):
    start: datetime
    labelled: int
    correct: int
    accuracy: float


class VersionMonitor(BaseModel):
    """The figures of one version, or of one variant of it (see the module notes)."""

    version: int
    variant: str | None = None
    requests: int
    errors: int
    server_errors: int
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
    variants: list[VersionMonitor] = []


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


Key = tuple[int, str]  # version, variant ("" for none)
_BUCKET = timedelta(seconds=ROLLUP_BUCKET_S)


@dataclass
class _Figures:
    """What the queries add up, per (version, variant)."""

    hist: dict[Key, Counter[int]] = field(default_factory=dict)
    errors: Counter[Key] = field(default_factory=Counter)
    server_errors: Counter[Key] = field(default_factory=Counter)
    preds: dict[Key, Counter[str]] = field(default_factory=dict)
    windows: dict[Key, dict[int, list[int]]] = field(default_factory=dict)

    def add_latency(self, key: Key, bucket: int, requests: int, errors: int,
                    server_errors: int) -> None:
        self.hist.setdefault(key, Counter())[bucket] += requests
        self.errors[key] += errors
        self.server_errors[key] += server_errors

    def add_prediction(self, key: Key, label: str, n: int) -> None:
        self.preds.setdefault(key, Counter())[label] += n

    def add_window(self, key: Key, w: int, labelled: int, correct: int) -> None:
        t = self.windows.setdefault(key, {}).setdefault(w, [0, 0])
        t[0] += labelled
        t[1] += correct


def split(since: datetime, until: datetime, window_s: int
          ) -> tuple[datetime, datetime, list[datetime], list[tuple[datetime, datetime]]]:
    """How ``[since, until)`` is answered: ``(start, end, cut, raw)``.

    Rollups answer the buckets starting in ``[start, end)`` except those in ``cut`` (buckets a
    window boundary falls inside); the records answer the ``raw`` intervals (the rest).
    """
    start, end = bucket_ceil(since), bucket_floor(until)
    if start >= end:
        return start, start, [], [(since, until)]
    raw = [(since, start)] if since < start else []
    cut: list[datetime] = []
    step = timedelta(seconds=window_s)
    boundary = since + step
    if window_s % ROLLUP_BUCKET_S or bucket_floor(since) != since:
        while boundary < end:
            floor = bucket_floor(boundary)
            if floor != boundary and floor >= start and (not cut or cut[-1] != floor):
                cut.append(floor)
                raw.append((floor, floor + _BUCKET))
            boundary += step
    if end < until:
        raw.append((end, until))
    return start, end, cut, raw


def ends(since: datetime, until: datetime, width: int
         ) -> tuple[datetime, datetime, list[tuple[datetime, datetime]]]:
    """``(start, end, raw)``: whole ``width`` buckets ``[start, end)`` and the rest of
    ``[since, until)`` (its partial buckets at either end) as ``raw`` intervals."""
    start, end = bucket_ceil(since, width), bucket_floor(until, width)
    if start >= end:
        return start, start, [(since, until)]
    raw = ([(since, start)] if since < start else []) + ([(end, until)] if end < until else [])
    return start, end, raw


def monitor(
    session: Session,
    model: str,
    since: datetime,
    until: datetime,
    *,
    against: int | None = None,
    window_s: int = 3600,
    use_rollups: bool = True,
) -> MonitorReport:
    """Per-version figures of ``model`` for records created in ``[since, until)``.

    Requests, errors and latency come from the hourly rollups (whole hours) and the records
    (the rest); predictions and accuracy from the minute rollups and the records (see
    :func:`split`). ``use_rollups=False`` computes everything from the records (the same
    figures, slower: what ``bench/bench_inference_log.py`` compares against).
    """
    figures = _Figures()
    if use_rollups:
        h_start, h_end, h_raw = ends(since, until, LATENCY_ROLLUP_S)
        start, end, cut, raw = split(since, until, window_s)
    else:
        h_start = h_end = start = end = since
        h_raw, cut, raw = [(since, until)], [], [(since, until)]
    if h_start < h_end:
        _latency_rollups(session, figures, model, h_start, h_end)
    if start < end:
        _prediction_rollups(session, figures, model, since, window_s, start, end, cut)
    for a, b in h_raw:
        _latency_records(session, figures, model, a, b)
    for a, b in raw:
        _prediction_records(session, figures, model, since, window_s, a, b)
    per_version = _merge_variants(figures)
    totals = {v: sum(h.values()) for (v, _), h in per_version.hist.items()}
    if against is None and totals:
        against = max(totals.items(), key=lambda t: (t[1], -t[0]))[0]
    base = per_version.preds.get((against, ""), Counter()) if against is not None else None
    versions = [_figures_of(per_version, key, since, window_s, base)
                for key in sorted(per_version.hist)]
    variants = [_figures_of(figures, key, since, window_s, base)
                for key in sorted(figures.hist) if key[1]]
    return MonitorReport(model=model, since=since, until=until, window_s=window_s,
                         against=against, versions=versions, variants=variants)


def _merge_variants(f: _Figures) -> _Figures:
    out = _Figures()
    for (v, _), hist in f.hist.items():
        for bucket, n in hist.items():
            out.add_latency((v, ""), bucket, n, 0, 0)
    for (v, _), e in f.errors.items():
        out.errors[(v, "")] += e
    for (v, _), e in f.server_errors.items():
        out.server_errors[(v, "")] += e
    for (v, _), preds in f.preds.items():
        for label, n in preds.items():
            out.add_prediction((v, ""), label, n)
    for (v, _), windows in f.windows.items():
        for w, (labelled, correct) in windows.items():
            out.add_window((v, ""), w, labelled, correct)
    return out


def _figures_of(f: _Figures, key: Key, since: datetime, window_s: int,
                base: Counter[str] | None) -> VersionMonitor:
    version, variant = key
    hist = f.hist[key]
    requests = sum(hist.values())
    errors = f.errors[key]
    preds = f.preds.get(key, Counter())
    acc = [AccuracyWindow(start=since + timedelta(seconds=w * window_s), labelled=n,
                          correct=k, accuracy=k / n)
           for w, (n, k) in sorted(f.windows.get(key, {}).items()) if n]
    labelled = sum(w.labelled for w in acc)
    correct = sum(w.correct for w in acc)
    return VersionMonitor(
        version=version,
        variant=variant or None,
        requests=requests,
        errors=errors,
        server_errors=f.server_errors[key],
        error_rate=errors / requests if requests else None,
        latency_ms={f"p{round(q * 100)}": nearest_rank(sorted(hist.items()), q)
                    for q in QUANTILES} if requests else {},
        predictions=dict(sorted((k, n) for k, n in preds.items() if n)),
        shift=None if base is None else _shift(dict(preds), dict(base)),
        labelled=labelled,
        correct=correct,
        accuracy=correct / labelled if labelled else None,
        accuracy_windows=acc,
    )


def _latency_rollups(session: Session, f: _Figures, model: str, start: datetime,
                     end: datetime) -> None:
    i = INFERENCE_ROLLUP
    for version, variant, bucket, requests, errors, server in session.execute(
        sa.select(i.c.version, i.c.variant, i.c.latency_bucket, sa.func.sum(i.c.requests),
                  sa.func.sum(i.c.errors), sa.func.sum(i.c.server_errors))
        .where(i.c.model == model, i.c.bucket_start >= start, i.c.bucket_start < end)
        .group_by(i.c.version, i.c.variant, i.c.latency_bucket)
    ):
        f.add_latency((version, variant), bucket, int(requests or 0), int(errors or 0),
                      int(server or 0))


def _prediction_rollups(session: Session, f: _Figures, model: str, since: datetime,
                        window_s: int, start: datetime, end: datetime, cut: list[datetime]
                        ) -> None:
    p = PREDICTION_ROLLUP
    where = [p.c.model == model, p.c.bucket_start >= start, p.c.bucket_start < end]
    if cut:
        where.append(p.c.bucket_start.not_in(cut))
    for version, variant, label, n in session.execute(
        sa.select(p.c.version, p.c.variant, p.c.label, sa.func.sum(p.c.answered))
        .where(*where).group_by(p.c.version, p.c.variant, p.c.label)
    ):
        f.add_prediction((version, variant), label, int(n or 0))
    index = (_epoch(session, p.c.bucket_start) - int(since.timestamp())) // window_s
    for version, variant, w, labelled, correct in session.execute(
        sa.select(p.c.version, p.c.variant, index.label("w"), sa.func.sum(p.c.labelled),
                  sa.func.sum(p.c.correct))
        .where(*where, p.c.labelled > 0).group_by(p.c.version, p.c.variant, "w")
    ):
        f.add_window((version, variant), int(w), int(labelled or 0), int(correct or 0))


def _latency_records(session: Session, f: _Figures, model: str, a: datetime, b: datetime
                     ) -> None:
    c = TABLE.c
    variant = sa.func.coalesce(c.variant, "")
    for version, var, bucket, count, errors, server in session.execute(
        sa.select(c.version, variant, c.latency_bucket, sa.func.count(),
                  sa.func.sum(sa.case((c.status >= 400, 1), else_=0)),
                  sa.func.sum(sa.case((c.status >= 500, 1), else_=0)))
        .where(c.model == model, c.created_at >= a, c.created_at < b, c.row_index == 0)
        .group_by(c.version, variant, c.latency_bucket)
    ):
        f.add_latency((version, var), bucket, int(count), int(errors or 0), int(server or 0))


def _prediction_records(session: Session, f: _Figures, model: str, since: datetime,
                        window_s: int, a: datetime, b: datetime) -> None:
    """One interval's records (each interval its own index range scan)."""
    c = TABLE.c
    where = (c.model == model, c.created_at >= a, c.created_at < b)
    variant = sa.func.coalesce(c.variant, "")
    for version, var, label, count in session.execute(
        sa.select(c.version, variant, c.label, sa.func.count())
        .where(*where, c.status < 400, c.label.is_not(None))
        .group_by(c.version, variant, c.label)
    ):
        f.add_prediction((version, var), label, int(count))
    index = (_epoch(session, c.created_at) - int(since.timestamp())) // window_s
    for version, var, w, labelled, correct in session.execute(
        sa.select(c.version, variant, index.label("w"), sa.func.count(),
                  sa.func.sum(sa.case((c.label == c.true_label, 1), else_=0)))
        .where(*where, c.true_label.is_not(None), c.status < 400, c.label.is_not(None))
        .group_by(c.version, variant, "w")
    ):
        f.add_window((version, var), int(w), int(labelled), int(correct or 0))
