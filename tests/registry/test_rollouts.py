"""The rollout state machine on SQLite and PostgreSQL, over real telemetry and real evidence.

Devices are enrolled, polled through :func:`registry.assignment.assign` and report through
:func:`registry.telemetry.record_report`; the guards read
:func:`registry.version_evidence.version_evidence`. Time is passed explicitly to ``tick``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.rollouts import GuardSpec, RolloutAbort, RolloutApprove, RolloutCreate, StepSpec
from edgefleet.wire import AliasMove, DeviceEvent, EnrollRequest, LocalEvaluation, TelemetryReport
from registry.aliases import alias_history, set_alias
from registry.assignment import assign
from registry.db import session_scope
from registry.devices import enroll, get_device
from registry.errors import ConflictError, InvalidQueryError
from registry.models import AuditRecord, Model, utcnow
from registry.rollouts import judge, machine, queries
from registry.rollouts.routing import build_snapshot, choose
from registry.rollouts.strategies import bucket
from registry.store import ArtifactStore
from registry.telemetry import record_report
from registry.version_evidence import version_evidence
from tests.registry.support import PlanFiles, model_with_versions

N_DEVICES = 12
ACC = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=40)
FAILS = GuardSpec(kind="device_failures", margin=0, min_samples=2)


@pytest.fixture
def fleet(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    """``digits`` v1 (production), v2, v3; devices d00..d11 (even: site=a, odd: site=b)."""
    model_with_versions(engine, store, plan_files, seeds=(1, 2))
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
        for i in range(N_DEVICES):
            enroll(s, EnrollRequest(enrollment_token="x", device_id=f"d{i:02d}", model="digits",
                                    labels={"site": "a" if i % 2 == 0 else "b"}))
        mixed_salt(s, [f"d{i:02d}" for i in range(N_DEVICES)])
    return engine


def mixed_salt(session: Session, device_ids: list[str]) -> None:
    """Give ``digits`` a rollout salt that puts between a third and two thirds of the devices
    below 50 (a canary at 50 % is then mixed whatever the random salt would have been)."""
    model = session.exec(select(Model).where(Model.name == "digits")).one()
    for i in range(1000):
        below = sum(bucket(d, "digits", f"salt{i}") < 50 for d in device_ids)
        if len(device_ids) / 3 <= below <= 2 * len(device_ids) / 3:
            model.rollout_salt = f"salt{i}"
            session.add(model)
            return
    raise AssertionError("no mixed salt found")


def start(engine: Engine, **kw: object) -> int:
    body = RolloutCreate.model_validate({"model": "digits", "candidate": 2, **kw})
    with session_scope(engine, write=True) as s:
        row = machine.start(s, body, actor="admin:ops")
        return int(row.id or 0)


def tick(engine: Engine, rid: int, after_s: float = 0.0) -> str | None:
    with session_scope(engine, write=True) as s:
        row = queries.get_rollout(s, rid)
        now = (row.step_started_at or row.created_at) + timedelta(seconds=after_s)
        now = max(now, utcnow()) if after_s == 0 else now
        return machine.tick(s, row, evidence=version_evidence, now=now)


def state(engine: Engine, rid: int) -> tuple[str, int]:
    with session_scope(engine) as s:
        row = queries.get_rollout(s, rid)
        return row.state, row.step


def report_all(engine: Engine, accuracy: dict[int, float], *, n: int = 50,
               events: dict[int, str] | None = None) -> dict[str, int]:
    """Every device polls, then reports ``accuracy[version]`` on ``n`` labelled examples."""
    ran: dict[str, int] = {}
    now = utcnow()
    with session_scope(engine, write=True) as s:
        for i in range(N_DEVICES):
            device = get_device(s, f"d{i:02d}")
            version = assign(s, device).version.number
            ran[device.id] = version
            evs = []
            if events and version in events:
                evs = [DeviceEvent(kind=events[version], at=now, model="digits",  # type: ignore[arg-type]
                                   version=version)]
            record_report(s, device, TelemetryReport(
                idempotency_key=uuid.uuid4().hex, model="digits", version=version,
                window_start=now - timedelta(seconds=5), window_end=now,
                local_eval=LocalEvaluation(n_examples=n, accuracy=accuracy[version]),
                events=evs))
    return ran


def events(engine: Engine, rid: int) -> list[str]:
    with session_scope(engine) as s:
        return [e.kind for e in queries.timeline(s, rid)]


def test_good_canary_is_promoted_step_by_step(fleet: Engine) -> None:
    rid = start(fleet, steps=[StepSpec(percent=50, bake_s=0), StepSpec(percent=100, bake_s=0)],
                guards=[ACC, FAILS])
    assert state(fleet, rid) == ("running", 0)
    assert tick(fleet, rid) is None  # no evidence yet: waits
    ran = report_all(fleet, {1: 0.9, 2: 0.9})
    assert 0 < sum(v == 2 for v in ran.values()) < N_DEVICES  # about half on the candidate
    assert tick(fleet, rid) == "advance"
    assert state(fleet, rid) == ("running", 1)
    ran = report_all(fleet, {1: 0.9, 2: 0.9})
    assert set(ran.values()) == {2}  # 100 %: the baseline's figures come from the earlier step
    assert tick(fleet, rid) == "advance"
    assert state(fleet, rid)[0] == "promoted"
    assert set(report_all(fleet, {1: 0.9, 2: 0.9}).values()) == {2}
    with session_scope(fleet) as s:
        history = alias_history(s, "digits").items
        assert all(f"rollout {rid}" in e.reason for e in history if e.actor != "t")
        assert {e.alias for e in history if e.actor != "t"} == {"canary", "production"}
        actions = set(s.exec(select(AuditRecord.action)).all())
        assert {"rollout.start", "rollout.step", "rollout.promote"} <= actions
    assert events(fleet, rid) == ["start", "step", "wait", "pass", "step", "pass", "promote"]


def test_bad_candidate_rolls_back_naming_the_guard(fleet: Engine) -> None:
    rid = start(fleet, steps=[StepSpec(percent=50, bake_s=60), StepSpec(percent=100)],
                guards=[ACC, FAILS])
    report_all(fleet, {1: 0.9, 2: 0.4})
    assert tick(fleet, rid) == "rollback"  # at once, before the bake time
    assert state(fleet, rid) == ("rolled_back", 0)
    assert set(report_all(fleet, {1: 0.9, 2: 0.4}).values()) == {1}
    with session_scope(fleet) as s:
        last = queries.timeline(s, rid)[-1]
        assert last.kind == "rollback" and "device_accuracy" in last.message
        assert last.evidence and last.evidence["guards"][0]["decision"] == "fail"
        assert queries.active_rollout(s, 1) is None
        trail = s.exec(select(AuditRecord).where(AuditRecord.action == "rollout.rollback")).all()
        assert [(r.actor, r.target) for r in trail] == [
            (machine.CONTROLLER, f"digits/rollouts/{rid}")]
        assert "device_accuracy" in (trail[0].reason or "")


def test_a_device_crash_rolls_back(fleet: Engine) -> None:
    rid = start(fleet, steps=[StepSpec(percent=50, bake_s=60)], guards=[ACC, FAILS])
    report_all(fleet, {1: 0.9, 2: 0.9}, events={2: "crash"})
    assert tick(fleet, rid) == "rollback"
    with session_scope(fleet) as s:
        assert "device_failures" in queries.timeline(s, rid)[-1].message


def test_too_little_evidence_waits_then_times_out(fleet: Engine) -> None:
    rid = start(fleet, steps=[StepSpec(percent=50, bake_s=0, timeout_s=120)],
                guards=[GuardSpec(kind="device_accuracy", margin=0.05, min_samples=10_000)])
    report_all(fleet, {1: 0.9, 2: 0.9})
    for after in (0, 60, 119):
        assert tick(fleet, rid, after) is None
        assert state(fleet, rid) == ("running", 0)
    assert tick(fleet, rid, 121) == "rollback"
    with session_scope(fleet) as s:
        last = queries.timeline(s, rid)[-1]
        assert "timeout" in last.message and "device_accuracy" in last.message
        assert "too little data" in last.message
    assert events(fleet, rid).count("wait") == 1  # one event per change of verdict


def test_approval_blocks_promotion_until_given(fleet: Engine) -> None:
    report_all(fleet, {1: 0.9, 2: 0.9})  # the baseline's recent past
    rid = start(fleet, steps=[StepSpec(percent=100, bake_s=0)], guards=[ACC], approval=True)
    assert tick(fleet, rid) is None  # nothing on the candidate yet
    ran = report_all(fleet, {1: 0.9, 2: 0.9})
    assert set(ran.values()) == {2}
    assert tick(fleet, rid) == "advance"
    assert state(fleet, rid)[0] == "awaiting_approval"
    for _ in range(3):
        assert tick(fleet, rid, 1000) is None  # ticking never promotes
    with session_scope(fleet) as s:
        assert queries.get_rollout(s, rid).awaiting == "promotion"
        assert build_snapshot(s, "digits").production == 1
    with session_scope(fleet, write=True) as s:
        machine.approve(s, queries.get_rollout(s, rid), RolloutApprove(reason="ok"),
                        actor="admin:ops")
    assert state(fleet, rid)[0] == "promoted"
    with session_scope(fleet, write=True) as s, pytest.raises(ConflictError):
        machine.approve(s, queries.get_rollout(s, rid), RolloutApprove(), actor="admin:ops")


def test_approval_before_a_step(fleet: Engine) -> None:
    rid = start(fleet, steps=[StepSpec(percent=20, approval=True), StepSpec(percent=100)])
    assert state(fleet, rid) == ("awaiting_approval", 0)
    assert set(report_all(fleet, {1: 0.9, 2: 0.9}).values()) == {1}
    with session_scope(fleet, write=True) as s:
        machine.approve(s, queries.get_rollout(s, rid), RolloutApprove(), actor="admin:ops")
    assert state(fleet, rid) == ("running", 0)


def test_one_active_rollout_per_model_and_abort(fleet: Engine) -> None:
    rid = start(fleet)
    with pytest.raises(ConflictError, match="already has an active rollout"):
        start(fleet, candidate=3)
    with session_scope(fleet, write=True) as s:
        machine.abort(s, queries.get_rollout(s, rid), RolloutAbort(reason="stop"), actor="a:b")
    assert state(fleet, rid)[0] == "aborted"
    with session_scope(fleet, write=True) as s, pytest.raises(ConflictError):
        machine.abort(s, queries.get_rollout(s, rid), RolloutAbort(), actor="a:b")
    rid3 = start(fleet, candidate=3)  # the model is free again
    with session_scope(fleet, write=True) as s:
        machine.abort(s, queries.get_rollout(s, rid3), RolloutAbort(), actor="a:b")
    with pytest.raises(InvalidQueryError, match="already production"):
        start(fleet, candidate=1)


def test_waves_follow_device_labels(fleet: Engine) -> None:
    rid = start(fleet, strategy="waves", guards=[ACC],
                steps=[StepSpec(labels={"site": "a"}, bake_s=0), StepSpec(bake_s=0)])
    ran = report_all(fleet, {1: 0.9, 2: 0.9})
    assert {d for d, v in ran.items() if v == 2} == {f"d{i:02d}" for i in range(0, 12, 2)}
    with session_scope(fleet) as s:  # REST callers stay on the baseline during waves
        assert choose(build_snapshot(s, "digits"), caller_key="x", request_key="r").version == 1
    assert tick(fleet, rid) == "advance"
    with session_scope(fleet) as s:  # the second wave adds site b
        row = queries.get_rollout(s, rid)
        added = judge.step_added(s, row, s.get(Model, row.model_id))  # type: ignore[arg-type]
    assert added == [f"d{i:02d}" for i in range(1, 12, 2)]
    assert set(report_all(fleet, {1: 0.9, 2: 0.9}).values()) == {2}
    assert tick(fleet, rid) == "advance"
    assert state(fleet, rid)[0] == "promoted"
    with session_scope(fleet) as s:
        cover = [g for e in queries.timeline(s, rid) if e.kind == "pass" and e.step == 1
                 for g in (e.evidence or {}).get("guards", []) if g["kind"] == "step_coverage"]
    assert [g["decision"] for g in cover] == ["pass"] and cover[0]["candidate_n"] == 6


def test_canary_membership_is_sticky_and_rest_follows(fleet: Engine) -> None:
    start(fleet, steps=[StepSpec(percent=30)])
    first = report_all(fleet, {1: 0.9, 2: 0.9})
    assert report_all(fleet, {1: 0.9, 2: 0.9}) == first
    with session_scope(fleet) as s:
        snap = build_snapshot(s, "digits")
        routes = [choose(snap, caller_key=f"app-{i}", request_key=str(i)) for i in range(400)]
        share = sum(r.version == 2 for r in routes) / len(routes)
        assert 0.2 < share < 0.4
        assert all(r.shadow_version is None for r in routes)
        assert {r.variant for r in routes} == {"candidate", "baseline"}
        assert choose(snap, caller_key="app-1", request_key="a") == choose(
            snap, caller_key="app-1", request_key="b")


def test_ab_splits_tests_and_promotes_the_winner(fleet: Engine) -> None:
    rid = start(fleet, strategy="ab", candidate=None, horizon_s=60, min_samples=200,
                variants=[{"name": "control", "version": 1}, {"name": "new", "version": 2}])
    ran = report_all(fleet, {1: 0.80, 2: 0.97}, n=250)
    assert set(ran.values()) == {1, 2}
    assert tick(fleet, rid, 10) is None  # before the horizon
    assert tick(fleet, rid, 61) == "promote"
    with session_scope(fleet) as s:
        row = queries.get_rollout(s, rid)
        ab = (row.last_decision or {})["ab"]
        assert ab["winner"] == "new" and ab["significant"]
        assert "z-test" in ab["test"] and ab["min_samples"] == 200
        assert {a["name"]: a["n"] for a in ab["arms"]}["new"] >= 200
        assert build_snapshot(s, "digits").production == 2


def test_ab_with_too_little_data_never_decides(fleet: Engine) -> None:
    rid = start(fleet, strategy="ab", candidate=None, horizon_s=60, min_samples=10_000,
                variants=[{"name": "a", "version": 1}, {"name": "b", "version": 2}])
    report_all(fleet, {1: 0.5, 2: 0.99}, n=60)
    assert tick(fleet, rid, 61) is None
    assert tick(fleet, rid, 121) == "rollback"
    with session_scope(fleet) as s:
        assert build_snapshot(s, "digits").production == 1
        assert "too little data" in queries.timeline(s, rid)[-1].message


def test_shadow_samples_requests_and_never_answers(fleet: Engine) -> None:
    start(fleet, strategy="shadow", shadow_rate=0.25)
    with session_scope(fleet) as s:
        snap = build_snapshot(s, "digits")
        routes = [choose(snap, caller_key="app", request_key=f"req-{i}") for i in range(800)]
        assert all(r.version == 1 for r in routes)  # production always answers
        sampled = sum(r.shadow_version == 2 for r in routes) / len(routes)
        assert 0.18 < sampled < 0.32
        assert 2 in snap.warm
        device = get_device(s, "d00")
        choice = assign(s, device)
        assert choice.version.number == 1 and choice.shadow is not None
        assert choice.shadow.number == 2


def test_blue_green_prefetch_then_switch_and_back(fleet: Engine) -> None:
    rid = start(fleet, strategy="blue_green", prefetch_devices=0, guards=[ACC],
                steps=[StepSpec(bake_s=0), StepSpec(bake_s=0, timeout_s=60)])
    with session_scope(fleet) as s:
        choice = assign(s, get_device(s, "d01"))
        assert choice.version.number == 1 and choice.prefetch is not None
        assert 2 in build_snapshot(s, "digits").warm
    report_all(fleet, {1: 0.9, 2: 0.9})  # the baseline's evidence before the switch
    assert tick(fleet, rid) == "advance"
    with session_scope(fleet) as s:
        assert build_snapshot(s, "digits").production == 2  # the switch: one alias move
    assert set(report_all(fleet, {1: 0.9, 2: 0.3}).values()) == {2}
    assert tick(fleet, rid) == "rollback"
    with session_scope(fleet) as s:
        assert build_snapshot(s, "digits").production == 1  # switched back
    assert set(report_all(fleet, {1: 0.9, 2: 0.3}).values()) == {1}


def test_blue_green_waits_for_device_prefetch(fleet: Engine) -> None:
    rid = start(fleet, strategy="blue_green", prefetch_devices=3,
                steps=[StepSpec(bake_s=0, timeout_s=30), StepSpec(bake_s=0)])
    assert tick(fleet, rid, 1) is None
    with session_scope(fleet) as s:
        assert "0 of 3 devices" in (queries.get_rollout(s, rid).last_decision or {})[
            "guards"][0]["reason"]
    assert tick(fleet, rid, 31) == "rollback"


def test_restart_resumes_from_the_database(fleet: Engine, db_url: str) -> None:
    from registry.db import make_engine

    rid = start(fleet, steps=[StepSpec(percent=50, bake_s=0), StepSpec(percent=100)],
                guards=[ACC])
    other = make_engine(db_url)  # a new process's engine: nothing in memory
    try:
        with Session(other) as s:
            assert queries.active_rollout_ids(s) == [rid]
        report_all(fleet, {1: 0.9, 2: 0.9})
        assert tick(other, rid) == "advance"
        assert state(fleet, rid) == ("running", 1)
    finally:
        other.dispose()


def test_a_candidate_archived_mid_rollout_is_rolled_back(fleet: Engine) -> None:
    from registry.models import VersionStatus, VersionStatusUpdate
    from registry.versions import change_status
    from server.rollouts import RolloutController

    rid = start(fleet, strategy="blue_green", prefetch_devices=0, guards=[ACC],
                steps=[StepSpec(bake_s=0), StepSpec(bake_s=0)])
    with session_scope(fleet, write=True) as s:  # nothing aliases it before the switch
        change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
    assert RolloutController(fleet, 0).tick_all() == {rid: "rollback"}
    with session_scope(fleet) as s:
        last = queries.timeline(s, rid)[-1]
        assert last.kind == "rollback" and "cannot proceed" in last.message
        assert "ARCHIVED" in last.message
        assert build_snapshot(s, "digits").production == 1


def test_ab_rolls_back_at_once_when_a_variant_crashes(fleet: Engine) -> None:
    rid = start(fleet, strategy="ab", candidate=None, horizon_s=600,
                variants=[{"name": "control", "version": 1}, {"name": "new", "version": 2}])
    report_all(fleet, {1: 0.9, 2: 0.9}, events={2: "crash"})
    assert tick(fleet, rid, 5) == "rollback"  # well before the horizon
    with session_scope(fleet) as s:
        last = queries.timeline(s, rid)[-1]
        assert "device_failures[new]" in last.message
        assert build_snapshot(s, "digits").production == 1

