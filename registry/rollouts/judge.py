"""One step's verdict from the evidence: which windows to compare, and the guards' results.

:func:`judge` compares the candidate with the baseline over the current step's window:

* ``canary``, ``waves``, ``shadow``: the candidate since the step started, the baseline since
  ``baseline_window_s`` before the rollout started (the same step's traffic and the baseline's
  recent past: once a step covers the whole fleet the baseline has no traffic of its own);
* ``blue_green`` before the switch (``prefetch``): the pre-download check only — the devices'
  ``prefetched`` events for the candidate reach the required count, with no ``smoke_failed``
  (the failure guards fail at once on one);
* ``blue_green`` after the switch: the candidate since the switch against the baseline up to
  the switch (from ``baseline_window_s`` before the rollout).

A ``canary`` or ``waves`` step after the first that adds devices (its members by
:func:`registry.rollouts.strategies.arm_for_device` minus the previous step's, over the model's
enrolled devices, :func:`step_added`) and has a device guard (``device_accuracy``,
``fallback_rate``, ``device_failures``) also needs a report on the candidate from at least one
of the devices it added (a ``step_coverage`` result, :func:`_coverage`): the devices of earlier
steps alone do not pass it.

:func:`judge_ab` gathers each variant's labelled accuracy (devices' local evaluation plus REST
feedback) since the step started and runs :func:`registry.rollouts.stats.compare`;
:func:`judge_ab_safety` applies the ``device_failures`` guards to every variant meanwhile.

Evidence comes from ``evidence(session, model=, version=, since=, until=, device_ids=)`` (the
signature of :func:`registry.version_evidence.version_evidence`); without one every guard waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from edgefleet.rollouts import GuardSpec, StepSpec
from registry.models import Model, Rollout
from registry.rollouts.guards import (
    FAIL,
    PASS,
    WAIT,
    Decision,
    EvidenceLike,
    GuardResult,
    evaluate_all,
    evidence_summary,
)
from registry.rollouts.queries import version_number
from registry.rollouts.routing import fleet
from registry.rollouts.stats import ABResult, ArmSample, compare
from registry.rollouts.strategies import bucket, canary_floor, labels_match

__all__ = ["EvidenceFn", "Judgement", "judge", "judge_ab", "judge_ab_safety", "step_added"]

EvidenceFn = Callable[..., EvidenceLike]
NO_SOURCE = "no evidence source"
#: Guards whose evidence comes from the devices running the candidate.
DEVICE_GUARDS = ("device_accuracy", "fallback_rate", "device_failures")


@dataclass(frozen=True)
class Judgement:
    verdict: Decision
    results: list[GuardResult]
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {"verdict": self.verdict, "guards": [r.as_dict() for r in self.results],
                "evidence": self.figures, **extra}

    def names(self, decision: str) -> list[str]:
        return [r.kind for r in self.results if r.decision == decision]

    def reasons(self, decision: str) -> str:
        return "; ".join(f"{r.kind}: {r.reason}" for r in self.results if r.decision == decision)


def _fetch(evidence: EvidenceFn, session: Session, model: str, version: int, since: datetime,
           until: datetime | None) -> EvidenceLike:
    return evidence(session, model=model, version=version, since=since, until=until,
                    device_ids=None)


def _prefetch(spec_guards: list[GuardSpec], cand: EvidenceLike, need: int) -> Judgement:
    failures = [g for g in spec_guards if g.kind == "device_failures"] or [
        GuardSpec(kind="device_failures", margin=0, min_samples=1)]
    done = int(cand.events.get("prefetched", 0))
    smoke = int(cand.events.get("smoke_failed", 0))
    if smoke > failures[0].margin:
        r = GuardResult("prefetch", FAIL, f"{smoke} device(s) failed the candidate's smoke test",
                        float(smoke), None, done, 0, failures[0].margin)
    elif done < need:
        r = GuardResult("prefetch", WAIT, f"too little data: {done} of {need} devices "
                        "pre-downloaded and smoke-tested the candidate", float(done),
                        candidate_n=done)
    else:
        r = GuardResult("prefetch", PASS, f"{done} devices pre-downloaded and smoke-tested the "
                        "candidate", float(done), None, done, 0, float(need))
    return Judgement(r.decision, [r], {"candidate": evidence_summary(cand)})


def _members(ids: list[str], positions: list[float], percent: float | None) -> set[str]:
    """The devices a canary step of ``percent`` holds (as
    :func:`registry.rollouts.strategies.arm_for_device` decides)."""
    if not percent:
        return set()
    floor = canary_floor(percent, positions)
    return {d for d, p in zip(ids, positions, strict=True)
            if p < percent or (floor is not None and p <= floor)}


def step_added(session: Session, row: Rollout, model: Model) -> list[str]:
    """The devices the current ``canary`` or ``waves`` step added to the previous one's (none
    for the first step or another strategy)."""
    steps = [StepSpec.model_validate(s) for s in (row.spec or {}).get("steps") or []]
    if row.strategy not in ("canary", "waves") or not 0 < row.step < len(steps):
        return []
    devices = fleet(session, model)
    if row.strategy == "waves":
        before = {d for d, labels in devices.items()
                  if any(labels_match(labels, s.labels) for s in steps[: row.step])}
        now = before | {d for d, labels in devices.items()
                        if labels_match(labels, steps[row.step].labels)}
        return sorted(now - before)
    ids = list(devices)
    positions = [bucket(d, model.name, model.rollout_salt) for d in ids]
    now = _members(ids, positions, steps[row.step].percent)
    return sorted(now - _members(ids, positions, steps[row.step - 1].percent))


def _coverage(session: Session, row: Rollout, model: Model, guards: list[GuardSpec],
              evidence: EvidenceFn, version: int, since: datetime) -> GuardResult | None:
    """WAIT until a device the step added reports on the candidate (module notes)."""
    if not any(g.kind in DEVICE_GUARDS for g in guards):
        return None
    added = step_added(session, row, model)
    if not added:
        return None
    ev = evidence(session, model=model.name, version=version, since=since, until=None,
                  device_ids=added)
    if ev.devices <= 0:
        return GuardResult("step_coverage", WAIT, f"too little data: none of the {len(added)} "
                           "device(s) this step added has reported on the candidate",
                           candidate_n=0, baseline_n=len(added))
    return GuardResult("step_coverage", PASS, f"{ev.devices} of the {len(added)} device(s) "
                       "this step added reported on the candidate", float(ev.devices), None,
                       ev.devices, len(added))


def judge(session: Session, row: Rollout, model: Model, evidence: EvidenceFn | None,
          now: datetime) -> Judgement:
    """The current step's verdict (see the module notes)."""
    spec: Mapping[str, Any] = row.spec or {}
    guards = [GuardSpec.model_validate(g) for g in spec.get("guards") or []]
    if evidence is None:
        results = [GuardResult(g.kind, WAIT, NO_SOURCE) for g in guards] or [
            GuardResult("evidence", WAIT, NO_SOURCE)]
        return Judgement(WAIT, results)
    cand_v = version_number(session, row.candidate_version_id)
    base_v = version_number(session, row.baseline_version_id)
    assert cand_v is not None and base_v is not None
    since = row.step_started_at or row.created_at
    if row.strategy == "blue_green" and row.phase == "prefetch":
        cand = _fetch(evidence, session, model.name, cand_v, row.created_at, None)
        return _prefetch(guards, cand, int(spec.get("prefetch_devices", 1)))
    b_since, b_until = row.created_at - timedelta(seconds=float(
        spec.get("baseline_window_s", 0.0))), None
    if row.strategy == "blue_green" and row.switched_at is not None:
        since, b_since, b_until = row.switched_at, row.created_at, row.switched_at
    cand = _fetch(evidence, session, model.name, cand_v, since, None)
    base = _fetch(evidence, session, model.name, base_v, b_since, b_until)
    verdict, results = evaluate_all(guards, cand, base)
    coverage = _coverage(session, row, model, guards, evidence, cand_v, since)
    if coverage is not None:
        results.append(coverage)
        verdict = WAIT if verdict == PASS and coverage.decision == WAIT else verdict
    figures = {"candidate": {"version": cand_v, **evidence_summary(cand)},
               "baseline": {"version": base_v, **evidence_summary(base)}}
    return Judgement(verdict, results, figures)


def judge_ab(session: Session, row: Rollout, model: Model,
             evidence: EvidenceFn | None) -> ABResult | None:
    """The A/B comparison over the step so far (``None`` without an evidence source)."""
    if evidence is None:
        return None
    spec: Mapping[str, Any] = row.spec or {}
    since = row.step_started_at or row.created_at
    arms = []
    for v in spec.get("variants") or []:
        ev = _fetch(evidence, session, model.name, int(v["version"]), since, None)
        arms.append(ArmSample(str(v["name"]), int(v["version"]),
                              ev.device_labelled + ev.feedback_labelled,
                              ev.device_correct + ev.feedback_correct))
    return compare(arms, alpha=float(spec.get("alpha", 0.05)),
                   min_samples=int(spec.get("min_samples", 200)))



def judge_ab_safety(session: Session, row: Rollout, model: Model,
                    evidence: EvidenceFn | None) -> Judgement | None:
    """The ``device_failures`` guards on every variant during the horizon (one crash is a breach
    whatever the test would say); ``None`` when there are none or no evidence source."""
    spec: Mapping[str, Any] = row.spec or {}
    guards = [GuardSpec.model_validate(g) for g in spec.get("guards") or []
              if g.get("kind") == "device_failures"]
    if evidence is None or not guards:
        return None
    since = row.step_started_at or row.created_at
    results = []
    for v in spec.get("variants") or []:
        ev = _fetch(evidence, session, model.name, int(v["version"]), since, None)
        for r in evaluate_all(guards, ev, ev)[1]:
            results.append(GuardResult(f"{r.kind}[{v['name']}]", r.decision, r.reason,
                                       r.candidate, r.baseline, r.candidate_n, r.baseline_n,
                                       r.threshold))
    verdict: Decision = FAIL if any(r.decision == FAIL for r in results) else WAIT
    return Judgement(verdict, results)
