"""Canary steps on a three-device fleet, on SQLite and PostgreSQL over real telemetry: a step
the hash alone would leave empty holds the lowest-placed device, the device-accuracy guard
compares it with its own baseline (paired) or says it pooled, and a step that adds devices
waits for one of them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from edgefleet.rollouts import GuardSpec, StepSpec
from edgefleet.wire import AliasMove, EnrollRequest, LocalEvaluation, TelemetryReport
from registry.aliases import set_alias
from registry.assignment import assign
from registry.db import session_scope
from registry.devices import enroll, get_device
from registry.models import Model, utcnow
from registry.rollouts import judge, queries
from registry.rollouts.strategies import bucket
from registry.store import ArtifactStore
from registry.telemetry import record_report
from tests.registry.support import PlanFiles, model_with_versions
from tests.registry.test_rollouts import ACC, start, state, tick

SMALL = ("s0", "s1", "s2")


@pytest.fixture
def small_fleet(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    """``digits`` v1 (production), v2; three devices and a salt that puts none of them below
    25 (a 25 % step would hold no device by the hash alone)."""
    model_with_versions(engine, store, plan_files, seeds=(1,))
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
        for d in SMALL:
            enroll(s, EnrollRequest(enrollment_token="x", device_id=d, model="digits"))
        model = s.exec(select(Model).where(Model.name == "digits")).one()
        model.rollout_salt = next(f"salt{i}" for i in range(1000)
                                  if all(bucket(d, "digits", f"salt{i}") >= 25 for d in SMALL))
        s.add(model)
    return engine


def by_position(engine: Engine) -> list[str]:
    with session_scope(engine) as s:
        salt = s.exec(select(Model).where(Model.name == "digits")).one().rollout_salt
    return sorted(SMALL, key=lambda d: bucket(d, "digits", salt))


def report_small(engine: Engine, accuracy: dict[tuple[str, int], float],
                 only: Sequence[str] = SMALL) -> dict[str, int]:
    """Each small-fleet device (of ``only``) polls, then reports ``accuracy[(device,
    version)]`` on 100 labelled examples (the devices' examples differ in difficulty)."""
    ran: dict[str, int] = {}
    now = utcnow()
    with session_scope(engine, write=True) as s:
        for d in only:
            device = get_device(s, d)
            version = assign(s, device).version.number
            ran[d] = version
            record_report(s, device, TelemetryReport(
                idempotency_key=uuid.uuid4().hex, model="digits", version=version,
                window_start=now - timedelta(seconds=5), window_end=now,
                local_eval=LocalEvaluation(n_examples=100, accuracy=accuracy[(d, version)])))
    return ran


def step_guard(engine: Engine, rid: int, kind: str, step: int) -> dict[str, object]:
    with session_scope(engine) as s:
        last = [e for e in queries.timeline(s, rid) if e.step == step and e.evidence
                and e.evidence.get("guards")][-1]
        assert last.evidence is not None
        return next(g for g in last.evidence["guards"] if g["kind"] == kind)


def per_device(hard: str, candidate: dict[str, float]) -> dict[tuple[str, int], float]:
    """Baseline 0.44 on ``hard``, 0.66 and 0.70 on the others (pooled 0.60)."""
    others = [d for d in SMALL if d != hard]
    base = {hard: 0.44, others[0]: 0.66, others[1]: 0.70}
    return {**{(d, 1): a for d, a in base.items()}, **{(d, 2): candidate.get(d, base[d])
                                                       for d in SMALL}}


def test_small_fleet_step_holds_a_device_and_compares_it_with_itself(small_fleet: Engine) -> None:
    """A 25 % step of 3 devices holds the lowest-placed one; it is the hardest device, and a
    candidate as good as the baseline there passes (paired 0.44 vs 0.44, not vs pooled 0.60)."""
    order = by_position(small_fleet)
    acc = per_device(order[0], {})
    assert set(report_small(small_fleet, acc).values()) == {1}  # the baseline's evidence
    rid = start(small_fleet, steps=[StepSpec(percent=25, bake_s=0),
                                    StepSpec(percent=100, bake_s=0)],
                guards=[ACC, GuardSpec(kind="device_failures", margin=0, min_samples=1)])
    ran = report_small(small_fleet, acc)
    assert {d for d, v in ran.items() if v == 2} == {order[0]}
    assert tick(small_fleet, rid) == "advance"
    guard = step_guard(small_fleet, rid, "device_accuracy", 0)
    assert guard["basis"] == "paired" and guard["decision"] == "pass"
    assert guard["baseline"] == pytest.approx(0.44) and "paired on 1 device" in str(
        guard["reason"])
    assert set(report_small(small_fleet, acc).values()) == {2}
    assert tick(small_fleet, rid) == "advance"
    assert step_guard(small_fleet, rid, "device_accuracy", 1)["basis"] == "paired"
    assert state(small_fleet, rid)[0] == "promoted"


def test_small_fleet_bad_candidate_on_the_step_device_rolls_back(small_fleet: Engine) -> None:
    order = by_position(small_fleet)
    acc = per_device(order[0], {order[0]: 0.30})  # 0.30 < 0.44 − 0.05 on the same device
    report_small(small_fleet, acc)
    rid = start(small_fleet, steps=[StepSpec(percent=25, bake_s=0), StepSpec(percent=100)],
                guards=[ACC])
    report_small(small_fleet, acc)
    assert tick(small_fleet, rid) == "rollback"
    guard = step_guard(small_fleet, rid, "device_accuracy", 0)
    assert (guard["basis"], guard["decision"]) == ("paired", "fail")
    assert set(report_small(small_fleet, acc).values()) == {1}


def test_without_baseline_evidence_on_the_device_the_guard_pools(small_fleet: Engine) -> None:
    """No report before the rollout: the step's device has no baseline evidence; the guard
    compares with the others' pooled baseline and says so."""
    order = by_position(small_fleet)
    acc = per_device(order[-1], {})  # the step's device is an easy one (0.66)
    rid = start(small_fleet, steps=[StepSpec(percent=25, bake_s=0), StepSpec(percent=100)],
                guards=[GuardSpec(kind="device_accuracy", margin=0.05, min_samples=100)])
    ran = report_small(small_fleet, acc)
    assert [d for d, v in ran.items() if v == 2] == [order[0]]
    assert tick(small_fleet, rid) == "advance"
    guard = step_guard(small_fleet, rid, "device_accuracy", 0)
    assert guard["basis"] == "pooled" and "no baseline evidence" in str(guard["reason"])
    assert guard["baseline_n"] == 200  # the two devices that stayed on the baseline


def test_a_step_that_adds_devices_waits_for_one_of_them(small_fleet: Engine) -> None:
    """The devices of the first step alone never pass the second: a device it added must
    report on the candidate first."""
    order = by_position(small_fleet)
    acc = per_device(order[0], {})
    report_small(small_fleet, acc)
    rid = start(small_fleet, steps=[StepSpec(percent=25, bake_s=0), StepSpec(percent=50,
                                                                             bake_s=0)],
                guards=[ACC])
    report_small(small_fleet, acc)
    assert tick(small_fleet, rid) == "advance"
    with session_scope(small_fleet) as s:
        row = queries.get_rollout(s, rid)
        added = judge.step_added(s, row, s.get(Model, row.model_id))  # type: ignore[arg-type]
    assert added and order[0] not in added
    for _ in range(2):  # the first step's device reports again: not enough
        report_small(small_fleet, acc, only=[order[0]])
        assert tick(small_fleet, rid) is None
    guard = step_guard(small_fleet, rid, "step_coverage", 1)
    assert guard["decision"] == "wait" and "this step added" in str(guard["reason"])
    assert report_small(small_fleet, acc, only=added[:1]) == {added[0]: 2}
    assert tick(small_fleet, rid) == "advance"
    assert step_guard(small_fleet, rid, "step_coverage", 1)["decision"] == "pass"
    assert state(small_fleet, rid)[0] == "promoted"


def test_above_the_floor_limit_a_step_follows_the_hash_alone(
    small_fleet: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more enrolled devices than ``FLOOR_MAX_DEVICES`` a device poll reads only the count:
    the 25 % step the hash leaves empty stays empty (large fleets hold about their share)."""
    from registry.rollouts import routing

    monkeypatch.setattr(routing, "FLOOR_MAX_DEVICES", len(SMALL) - 1)
    acc = per_device(by_position(small_fleet)[0], {})
    start(small_fleet, steps=[StepSpec(percent=25, bake_s=0), StepSpec(percent=100, bake_s=0)],
          guards=[ACC])
    assert set(report_small(small_fleet, acc).values()) == {1}
