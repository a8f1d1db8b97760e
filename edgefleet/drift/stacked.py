"""Many devices' next summaries taken at once: :class:`~edgefleet.drift.baseline.Baselines` with
the arithmetic stacked over the devices.

A round of federated training brings one packed summary per node
(:class:`~edgefleet.drift.packed.PackedSummary`). :func:`observe_many` gives every device the
same state as :meth:`Baselines.observe <edgefleet.drift.baseline.Baselines.observe>` one
summary after the other would (same windows, baseline, readings, up to floating-point rounding
of the merged moments), but computes the windows between cumulative summaries, the baseline
merges, the recent windows and both effect sizes for all devices in a few ``[devices,
features]`` array operations instead of a dozen small ones per device. Summaries in the
pydantic form, or devices whose previous summary was one, take the one-at-a-time path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgefleet.drift.baseline import (
    AnySummary,
    Baselines,
    DeviceBaseline,
    Reading,
    Window,
)
from edgefleet.drift.effect import Moments
from edgefleet.drift.packed import PackedSummary, stack_rows
from edgefleet.drift.state import chan_merge
from edgefleet.errors import SummaryError


def observe_many(baselines: Baselines, items: Sequence[tuple[str, AnySummary]]) -> list[str]:
    """Take each ``(device, summary)`` (one per device); the devices whose summary was refused
    (made against other bins). Order does not matter: devices are independent."""
    refused: list[str] = []
    batch: list[tuple[str, DeviceBaseline, PackedSummary]] = []
    fingerprint = baselines.reference.fingerprint
    for device, summary in items:
        if not isinstance(summary, PackedSummary):
            try:
                baselines.observe(device, summary)
            except SummaryError:
                refused.append(device)
            continue
        if summary.reference_fingerprint != fingerprint:
            refused.append(device)
            continue
        state = baselines.devices.get(device)
        if state is None or state.version != summary.version:
            state = baselines.devices[device] = DeviceBaseline(summary.version, baselines.config)
            baselines.readings.pop(device, None)
        if state.last is not None and not isinstance(state.last, PackedSummary):
            baselines.observe(device, summary)
        elif state.last is None or not state.last.same(summary):
            batch.append((device, state, summary))
    if batch:
        _take(baselines, batch)
    return refused


def _rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-length 1-D arrays as the rows of one matrix (``np.stack``, faster for many)."""
    return np.concatenate(arrays).reshape(len(arrays), -1)


def _moments(summaries: Sequence[PackedSummary]) -> tuple[np.ndarray, ...]:
    """Stacked rows, per-feature counts, means, m2, label totals and correct labels (copies)."""
    return tuple(stack_rows(summaries, ("n", "counts", "mean", "m2", "lab_total",
                                        "lab_correct")))


def _take(baselines: Baselines, batch: list[tuple[str, DeviceBaseline, PackedSummary]]) -> None:
    """New windows of a batch of devices (see :meth:`DeviceBaseline.observe`), then readings."""
    kind = baselines.config.kind
    rows, cnt, mean, m2, lt, lc = _moments([s for _, _, s in batch])
    prev = [i for i, (_, st, _) in enumerate(batch) if st.last is not None and kind != "windows"]
    if prev:
        idx = np.asarray(prev)
        lasts: list[PackedSummary] = [batch[i][1].last for i in prev]  # type: ignore[misc]
        p_rows, p_cnt, p_mean, p_m2, p_lt, p_lc = _moments(lasts)
        cont = np.ones(idx.size, dtype=bool)
        if kind == "auto":
            (now,) = stack_rows([batch[i][2] for i in prev], ("bins",))
            (before,) = stack_rows(lasts, ("bins",))
            cont = (rows[idx] > p_rows) & np.all(now >= before, axis=1)
        nb = cnt[idx] - p_cnt
        ok = cont & (rows[idx] > p_rows) & np.all(nb >= 0, axis=1)
        mb = np.divide(cnt[idx] * mean[idx] - p_cnt * p_mean, nb, out=np.zeros_like(nb),
                       where=nb > 0)
        m2b = m2[idx] - p_m2 - np.divide((mb - p_mean) ** 2 * p_cnt * nb, cnt[idx],
                                         out=np.zeros_like(nb), where=cnt[idx] > 0)
        m2b = np.where(nb > 0, np.maximum(m2b, 0.0), 0.0)
        sel = idx[ok]
        rows[sel] -= p_rows[ok]
        cnt[sel], mean[sel], m2[sel] = nb[ok], mb[ok], m2b[ok]
        lt[sel] = np.maximum(0, lt[sel] - p_lt[ok])
        lc[sel] = np.maximum(0, lc[sel] - p_lc[ok])
    var = np.divide(m2, cnt, out=np.zeros_like(cnt), where=cnt > 0)
    changed = []
    for i, (device, state, summary) in enumerate(batch):
        state.last = summary
        if rows[i] <= 0:
            continue
        window = Window(int(rows[i]), Moments(cnt[i], mean[i], var[i]), int(lt[i]), int(lc[i]))
        state.windows.append(window)
        if state.baseline_done:
            state.after_baseline += 1
        elif state.baseline is None:
            state.baseline = window
            state.baseline_done = window.rows >= state.config.baseline_rows
        else:
            changed.append((device, state, window, True))
            continue
        changed.append((device, state, window, False))
    _merge_baselines(baselines, [c for c in changed if c[3]])
    _readings(baselines, [(d, st) for d, st, _, _ in changed])


def _merge_baselines(baselines: Baselines,
                     items: list[tuple[str, DeviceBaseline, Window, bool]]) -> None:
    """``baseline.merged(window)`` for every item, stacked."""
    if not items:
        return
    bases = [st.baseline for _, st, _, _ in items]
    wins = [w for _, _, w, _ in items]
    na = _rows([b.moments.n for b in bases])  # type: ignore[union-attr]
    ma = _rows([b.moments.mean for b in bases])  # type: ignore[union-attr]
    va = _rows([b.moments.var for b in bases])  # type: ignore[union-attr]
    nb = _rows([w.moments.n for w in wins])
    mb = _rows([w.moments.mean for w in wins])
    vb = _rows([w.moments.var for w in wins])
    mean, m2 = chan_merge(na, ma, va * na, nb, mb, vb * nb)
    n = na + nb
    var = np.divide(m2, n, out=np.zeros_like(n), where=n > 0)
    for i, (_, st, w, _) in enumerate(items):
        b = st.baseline
        assert b is not None
        st.baseline = Window(b.rows + w.rows, Moments(n[i], mean[i], var[i]),
                             b.label_total + w.label_total, b.label_correct + w.label_correct)
        st.baseline_done = st.baseline.rows >= st.config.baseline_rows


def _readings(baselines: Baselines, items: list[tuple[str, DeviceBaseline]]) -> None:
    """:meth:`DeviceBaseline.reading` of every item, the recent windows and effects stacked."""
    min_rows, labels = baselines.config.min_rows, baselines.config.min_labels
    picked: list[Window] = []
    owners: list[int] = []
    ready: list[tuple[str, DeviceBaseline]] = []
    for device, st in items:
        got, taken = 0, []
        for w in reversed(st.windows):
            taken.append(w)
            got += w.rows
            if got >= min_rows:
                break
        if got >= min_rows:
            owners.extend([len(ready)] * len(taken))
            picked.extend(taken)
            ready.append((device, st))
    if not ready:
        return
    own = np.asarray(owners)
    starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
    n_i = _rows([w.moments.n for w in picked])
    m_i = _rows([w.moments.mean for w in picked])
    v_i = _rows([w.moments.var for w in picked])
    n = np.add.reduceat(n_i, starts, axis=0)
    mean = np.divide(np.add.reduceat(n_i * m_i, starts, axis=0), n, out=np.zeros_like(n),
                     where=n > 0)
    m2 = np.add.reduceat(v_i * n_i + n_i * (m_i - mean[own]) ** 2, starts, axis=0)
    var = np.divide(m2, n, out=np.zeros_like(n), where=n > 0)
    r_rows = np.add.reduceat(np.asarray([w.rows for w in picked]), starts)
    r_lt = np.add.reduceat(np.asarray([w.label_total for w in picked]), starts)
    r_lc = np.add.reduceat(np.asarray([w.label_correct for w in picked]), starts)
    ref = baselines.reference_moments
    diff = _shift(n, mean, var, ref.n[None, :], ref.mean[None, :], ref.var[None, :],
                  baselines.scales, baselines.spread)
    has_base = [i for i, (_, st) in enumerate(ready) if st.baseline_done and st.after_baseline]
    change = np.full(len(ready), np.nan)
    if has_base:
        hb = np.asarray(has_base)
        bases = [ready[i][1].baseline for i in has_base]
        change[hb] = _shift(n[hb], mean[hb], var[hb],
                            _rows([b.moments.n for b in bases]),  # type: ignore[union-attr]
                            _rows([b.moments.mean for b in bases]),  # type: ignore[union-attr]
                            _rows([b.moments.var for b in bases]),  # type: ignore[union-attr]
                            baselines.scales, baselines.spread)
    for i, (device, st) in enumerate(ready):
        base = st.baseline if st.baseline_done and st.after_baseline else None
        rlt = int(r_lt[i])
        baselines.readings[device] = Reading(
            rows=int(r_rows[i]),
            change=None if base is None else float(change[i]),
            difference=float(diff[i]),
            baseline_accuracy=None if base is None else base.accuracy(labels),
            recent_accuracy=int(r_lc[i]) / rlt if rlt >= labels else None,
            baseline_labels=0 if base is None else base.label_total,
            recent_labels=rlt,
        )


def _shift(na: np.ndarray, ma: np.ndarray, va: np.ndarray, nb: np.ndarray, mb: np.ndarray,
           vb: np.ndarray, scales: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """:func:`~edgefleet.drift.effect.moment_shift` of each row of ``a`` from ``b``."""
    ok = (na > 1) & (nb > 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ua = np.where(ok, va * na / (na - 1), 0.0)  # unbiased variances
        ub = np.where(ok, vb * nb / (nb - 1), 0.0)
        noise = np.where(ok, ua / na + ub / nb, 0.0)
        loc = (ma - mb) ** 2 - noise
        sd = (np.sqrt(ua) - np.sqrt(ub)) ** 2 - spread[None, :] * noise
        terms = np.where(ok, (loc + sd) / scales[None, :] ** 2, 0.0)
    count = ok.sum(axis=1)
    sq = np.divide(terms.sum(axis=1), count, out=np.zeros(count.size), where=count > 0)
    return np.asarray(np.sqrt(np.maximum(0.0, sq)))
