"""Guards: one decision per guard from the evidence of a candidate and its baseline.

Each guard compares candidate C with baseline B over the same window (:class:`EvidenceLike`,
the per-version evidence of :mod:`registry.version_evidence`) and answers :data:`PASS`, :data:`FAIL`
or :data:`WAIT`. Missing or too little data is never a pass: a guard whose sample on either
side is below its ``min_samples`` answers ``WAIT`` (the step waits and fails at its timeout).
Only ``device_failures`` fails on a small sample: one crash is evidence enough of a breach.

Decisions, for a :class:`edgefleet.rollouts.GuardSpec` with ``margin`` m and ``min_samples`` n:

``device_accuracy``    devices' labelled accuracy (local evaluation); both sides ≥ n labelled;
                       FAIL when acc(C) < acc(B) − m. **Paired** when every device with a
                       labelled evaluation of C also has one of B (``device_evals``): acc(B)
                       is then B's on those same devices (devices differ in how hard their
                       examples are, so the fleet's pooled B would favour or penalise C by
                       which devices run it); otherwise **pooled**: B over all its devices.
                       :attr:`GuardResult.basis` and the reason say which.
``feedback_accuracy``  the same over REST answers labelled by feedback.
``error_rate``         REST errors / requests, both sides ≥ n requests; FAIL when
                       rate(C) > rate(B) + m. Errors are answers with status ≥ 400
                       (``statuses`` ``all``) or only those ≥ 500 (``server``:
                       ``server_errors``, so a caller's malformed bodies never fail C).
``fallback_rate``      device fallbacks / device inferences (local + fallback), both ≥ n; FAIL when
                       rate(C) > rate(B) + m.
``latency_p99``        REST p99, both sides ≥ n requests; FAIL when p99(C) > p99(B) · (1 + m).
``device_failures``    C's smoke failures + crashes + rollbacks; FAIL when > m (any sample);
                       otherwise WAIT until ≥ n devices report on C.
``prediction_shift``   PSI of C's prediction histogram against B's (REST answers; the devices'
                       class counts when REST has fewer than n), both ≥ n; FAIL when PSI > m.
``shadow_agreement``   C as a shadow of production: ≥ n comparisons (the devices' and the REST
                       path's together, :func:`shadow_counts`); FAIL when the agreement
                       rate < 1 − m (B is not consulted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from edgefleet.drift.compare import psi
from edgefleet.rollouts import GuardSpec

__all__ = [
    "FAIL",
    "FAILURE_EVENTS",
    "PASS",
    "WAIT",
    "EvidenceLike",
    "GuardResult",
    "evaluate",
    "evaluate_all",
    "evidence_summary",
    "shadow_counts",
]

PASS: Literal["pass"] = "pass"
FAIL: Literal["fail"] = "fail"
WAIT: Literal["wait"] = "wait"
Decision = Literal["pass", "fail", "wait"]
#: Device event kinds counted as failures of the version they concern.
FAILURE_EVENTS = ("smoke_failed", "crash", "rollback")


class EvidenceLike(Protocol):
    """The attributes of :class:`registry.version_evidence.VersionEvidence` the guards read."""

    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...
    # ``server_errors`` (status >= 500) is optional: absent counts 0 (:func:`_count`)
    @property
    def latency_ms_p99(self) -> float | None: ...
    @property
    def feedback_labelled(self) -> int: ...
    @property
    def feedback_correct(self) -> int: ...
    @property
    def device_labelled(self) -> int: ...
    @property
    def device_correct(self) -> int: ...
    @property
    def device_inferences(self) -> int: ...
    @property
    def fallbacks(self) -> int: ...
    @property
    def devices(self) -> int: ...
    @property
    def events(self) -> Mapping[str, int]: ...
    @property
    def predictions(self) -> Mapping[str, int]: ...
    @property
    def device_predictions(self) -> Sequence[int]: ...


def _count(ev: EvidenceLike, name: str) -> int:
    return int(getattr(ev, name, 0) or 0)


def shadow_counts(ev: EvidenceLike) -> tuple[int, int]:
    """``(comparisons, agreements)`` of ``ev``'s version as a shadow: the devices'
    (``shadow_n``/``shadow_agree``) plus the REST path's (``rest_shadow_n``/
    ``rest_shadow_agree``); all four are optional attributes, absent counting 0."""
    return (_count(ev, "shadow_n") + _count(ev, "rest_shadow_n"),
            _count(ev, "shadow_agree") + _count(ev, "rest_shadow_agree"))


@dataclass(frozen=True)
class GuardResult:
    """One guard's decision, the figures behind it and a readable reason."""

    kind: str
    decision: Decision
    reason: str
    candidate: float | None = None
    baseline: float | None = None
    candidate_n: int = 0
    baseline_n: int = 0
    threshold: float | None = None
    #: how the sides were matched, where a guard has a choice (``paired``/``pooled``)
    basis: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def _too_little(spec: GuardSpec, what: str, c_n: int, b_n: int | None) -> GuardResult | None:
    low = c_n < spec.min_samples or (b_n is not None and b_n < spec.min_samples)
    if not low:
        return None
    sides = f"candidate {c_n}" + ("" if b_n is None else f", baseline {b_n}")
    return GuardResult(spec.kind, WAIT, f"too little data: {what} {sides} < {spec.min_samples}",
                       candidate_n=c_n, baseline_n=b_n or 0)


def _lower_bound(spec: GuardSpec, what: str, c: tuple[int, int], b: tuple[int, int]) -> GuardResult:
    """Fail when the candidate's rate ``num/den`` is below the baseline's minus the margin."""
    (c_num, c_den), (b_num, b_den) = c, b
    wait = _too_little(spec, what, c_den, b_den)
    if wait is not None:
        return wait
    rc, rb = c_num / c_den, b_num / b_den
    floor = rb - spec.margin
    ok = rc >= floor
    return GuardResult(spec.kind, PASS if ok else FAIL,
                       f"{what}: candidate {rc:.4f} {'>=' if ok else '<'} baseline {rb:.4f} − "
                       f"{spec.margin:g}", rc, rb, c_den, b_den, floor)


def _device_evals(ev: EvidenceLike) -> Mapping[str, tuple[int, int]]:
    return dict(getattr(ev, "device_evals", None) or {})


def _device_accuracy(spec: GuardSpec, c: EvidenceLike, b: EvidenceLike) -> GuardResult:
    """``device_accuracy``: paired on C's devices where B has evidence on all of them, else
    pooled (module notes)."""
    c_evals, b_evals = _device_evals(c), _device_evals(b)
    missing = sorted(d for d in c_evals if d not in b_evals)
    if c_evals and not missing:
        pairs = [b_evals[d] for d in c_evals]
        base = (sum(k for _, k in pairs), sum(n for n, _ in pairs))
        what, basis = f"device labelled accuracy paired on {len(c_evals)} device(s)", "paired"
    else:
        base = (b.device_correct, b.device_labelled)
        what, basis = "device labelled accuracy, baseline pooled over its devices", "pooled"
        if missing:
            shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
            what += f" ({len(missing)} of C's devices have no baseline evidence: {shown})"
    result = _lower_bound(spec, what, (c.device_correct, c.device_labelled), base)
    return replace(result, basis=basis)


def _upper_bound(spec: GuardSpec, what: str, c: tuple[int, int], b: tuple[int, int]) -> GuardResult:
    """Fail when the candidate's rate ``num/den`` exceeds the baseline's plus the margin."""
    (c_num, c_den), (b_num, b_den) = c, b
    wait = _too_little(spec, what, c_den, b_den)
    if wait is not None:
        return wait
    rc, rb = c_num / c_den, b_num / b_den
    ceiling = rb + spec.margin
    ok = rc <= ceiling
    return GuardResult(spec.kind, PASS if ok else FAIL,
                       f"{what}: candidate {rc:.4f} {'<=' if ok else '>'} baseline {rb:.4f} + "
                       f"{spec.margin:g}", rc, rb, c_den, b_den, ceiling)


def _error_rate(spec: GuardSpec, c: EvidenceLike, b: EvidenceLike) -> GuardResult:
    """``error_rate`` over every error (``statuses`` ``all``) or the 5xx only (``server``)."""
    if spec.statuses == "server":
        return _upper_bound(spec, "REST server error rate (5xx)",
                            (_count(c, "server_errors"), c.requests),
                            (_count(b, "server_errors"), b.requests))
    return _upper_bound(spec, "REST error rate", (c.errors, c.requests), (b.errors, b.requests))


def _latency(spec: GuardSpec, c: EvidenceLike, b: EvidenceLike) -> GuardResult:
    wait = _too_little(spec, "requests", c.requests, b.requests)
    if wait is not None:
        return wait
    if c.latency_ms_p99 is None or b.latency_ms_p99 is None:
        return GuardResult(spec.kind, WAIT, "no latency quantile on one side",
                           candidate_n=c.requests, baseline_n=b.requests)
    ceiling = b.latency_ms_p99 * (1 + spec.margin)
    ok = c.latency_ms_p99 <= ceiling
    return GuardResult(spec.kind, PASS if ok else FAIL,
                       f"p99 latency: candidate {c.latency_ms_p99:.3g} ms "
                       f"{'<=' if ok else '>'} {ceiling:.3g} ms", c.latency_ms_p99,
                       b.latency_ms_p99, c.requests, b.requests, ceiling)


def _failures(spec: GuardSpec, c: EvidenceLike) -> GuardResult:
    failures = sum(int(c.events.get(k, 0)) for k in FAILURE_EVENTS)
    detail = ", ".join(f"{k} {int(c.events.get(k, 0))}" for k in FAILURE_EVENTS)
    if failures > spec.margin:
        return GuardResult(spec.kind, FAIL, f"device failures {failures} > {spec.margin:g} "
                           f"({detail})", float(failures), None, c.devices, 0,
                           spec.margin)
    wait = _too_little(spec, "devices reporting", c.devices, None)
    if wait is not None:
        return GuardResult(spec.kind, WAIT, f"{wait.reason} ({detail})", float(failures),
                           candidate_n=c.devices)
    return GuardResult(spec.kind, PASS, f"device failures {failures} <= {spec.margin:g} on "
                       f"{c.devices} devices", float(failures), None,
                       c.devices, 0, spec.margin)


def _histograms(c: EvidenceLike, b: EvidenceLike, n: int) -> tuple[dict[str, int], dict[str, int]]:
    """The REST prediction histograms, or the devices' (class indices) when REST has too few."""
    if sum(c.predictions.values()) >= n and sum(b.predictions.values()) >= n:
        return dict(c.predictions), dict(b.predictions)
    return ({str(i): int(k) for i, k in enumerate(c.device_predictions)},
            {str(i): int(k) for i, k in enumerate(b.device_predictions)})


def _shift(spec: GuardSpec, c: EvidenceLike, b: EvidenceLike) -> GuardResult:
    cp, bp = _histograms(c, b, spec.min_samples)
    cn, bn = sum(cp.values()), sum(bp.values())
    wait = _too_little(spec, "predictions", cn, bn)
    if wait is not None:
        return wait
    labels = sorted(set(cp) | set(bp))
    value = float(psi(np.array([cp.get(k, 0) for k in labels], dtype=np.float64),
                      np.array([bp.get(k, 0) for k in labels], dtype=np.float64)))
    ok = value <= spec.margin
    return GuardResult(spec.kind, PASS if ok else FAIL,
                       f"prediction PSI {value:.4f} {'<=' if ok else '>'} {spec.margin:g}",
                       value, None, cn, bn, spec.margin)


def _agreement(spec: GuardSpec, c: EvidenceLike) -> GuardResult:
    n, agree = shadow_counts(c)
    wait = _too_little(spec, "shadow comparisons", n, None)
    if wait is not None:
        return wait
    rate = agree / n
    floor = 1 - spec.margin
    ok = rate >= floor
    return GuardResult(spec.kind, PASS if ok else FAIL,
                       f"shadow agreement {rate:.4f} {'>=' if ok else '<'} {floor:.4f}",
                       rate, None, n, 0, floor)


def evaluate(spec: GuardSpec, candidate: EvidenceLike, baseline: EvidenceLike) -> GuardResult:
    """The decision of guard ``spec`` on ``candidate`` against ``baseline``."""
    c, b = candidate, baseline
    if spec.kind == "device_accuracy":
        return _device_accuracy(spec, c, b)
    if spec.kind == "feedback_accuracy":
        return _lower_bound(spec, "REST feedback accuracy",
                            (c.feedback_correct, c.feedback_labelled),
                            (b.feedback_correct, b.feedback_labelled))
    if spec.kind == "error_rate":
        return _error_rate(spec, c, b)
    if spec.kind == "fallback_rate":
        return _upper_bound(spec, "device fallback rate", (c.fallbacks, c.device_inferences),
                            (b.fallbacks, b.device_inferences))
    if spec.kind == "latency_p99":
        return _latency(spec, c, b)
    if spec.kind == "device_failures":
        return _failures(spec, c)
    if spec.kind == "prediction_shift":
        return _shift(spec, c, b)
    if spec.kind == "shadow_agreement":
        return _agreement(spec, c)
    raise ValueError(f"unknown guard kind {spec.kind!r}")  # pragma: no cover - Literal-checked


def evaluate_all(
    specs: Sequence[GuardSpec], candidate: EvidenceLike, baseline: EvidenceLike
) -> tuple[Decision, list[GuardResult]]:
    """Every guard's result and the step's verdict: FAIL if any fails, else WAIT if any waits
    (or there are no guards: nothing observed is never a pass), else PASS."""
    results = [evaluate(s, candidate, baseline) for s in specs]
    if not results:
        return WAIT, [GuardResult("guards", WAIT, "no guards: a step without any never passes")]
    if any(r.decision == FAIL for r in results):
        return FAIL, results
    if any(r.decision == WAIT for r in results):
        return WAIT, results
    return PASS, results


def evidence_summary(ev: EvidenceLike) -> dict[str, Any]:
    """The figures of ``ev`` the timeline keeps (JSON-ready); ``shadow_n``/``shadow_agree``
    are every comparison the shadow guard counts, ``rest_shadow_*`` the REST path's part."""
    n, agree = shadow_counts(ev)
    return {
        "requests": ev.requests,
        "errors": ev.errors,
        "server_errors": _count(ev, "server_errors"),
        "latency_ms_p99": ev.latency_ms_p99,
        "feedback_labelled": ev.feedback_labelled,
        "feedback_correct": ev.feedback_correct,
        "device_labelled": ev.device_labelled,
        "device_correct": ev.device_correct,
        "device_inferences": ev.device_inferences,
        "fallbacks": ev.fallbacks,
        "devices": ev.devices,
        "events": {k: v for k, v in ev.events.items() if v},
        "predictions": dict(ev.predictions),
        "shadow_n": n,
        "shadow_agree": agree,
        "rest_shadow_n": _count(ev, "rest_shadow_n"),
        "rest_shadow_agree": _count(ev, "rest_shadow_agree"),
    }
