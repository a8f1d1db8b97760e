"""The rollout state machine: start, tick, approve, abort — each one transaction of the caller.

States: ``pending`` → ``running`` (step k) ⇄ ``awaiting_approval`` → ``promoted`` |
``rolled_back`` | ``aborted``. Every transition appends a :class:`~registry.models.RolloutEvent`
(with the evidence behind it) and an audit record (:func:`registry.audit.record`,
``rollout.start|step|approve|abort|rollback|promote``); every alias it moves carries
``rollout <id>: ...`` as its reason in the alias history; every change of routing bumps the
``serving`` generation (:func:`registry.serving.bump`), which the V2 path watches.

:func:`tick` judges the running step (:func:`registry.rollouts.judge.judge`): a breach rolls
back at once; a pass after the step's ``bake_s`` advances (or waits for approval); anything
else waits, and a step that has not passed by its ``timeout_s`` rolls back, naming the guards
that were still waiting. A/B rollouts run their test at the end of the horizon
(:func:`registry.rollouts.judge.judge_ab`) and roll back at once on a ``device_failures``
breach of any variant meanwhile. Alias effects by strategy:

``canary``      ``canary`` → candidate with the step's percent;
``waves``       ``canary`` → candidate with percent 0 (membership is by label);
``blue_green``  ``production`` → candidate at the switch (the second step), back on rollback;
``ab``          none until promotion;
``shadow``      ``shadow`` → candidate while it runs (guards by default: ``shadow_agreement``).
Promotion moves ``production`` to the candidate (A/B: the winner or the approved variant); a
rollout's ``canary``/``shadow`` alias is removed when it ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from edgefleet.rollouts import (
    ACTIVE_STATES,
    GuardSpec,
    RolloutAbort,
    RolloutApprove,
    RolloutCreate,
    StepSpec,
)
from edgefleet.wire import AliasMove
from registry import audit, serving
from registry.aliases import delete_alias, set_alias
from registry.catalog import get_model
from registry.errors import ConflictError, InvalidQueryError
from registry.models import CANARY, PRODUCTION, SHADOW, Alias, Model, Rollout, RolloutEvent, utcnow
from registry.rollouts.guards import FAIL, PASS
from registry.rollouts.judge import EvidenceFn, judge, judge_ab, judge_ab_safety
from registry.rollouts.queries import active_rollout, version_number
from registry.rollouts.strategies import default_steps
from registry.versions import get_version, require_ready

__all__ = ["CONTROLLER", "abandon", "abort", "approve", "resumed", "start", "tick"]

#: The actor of transitions the controller makes on its own.
CONTROLLER = "system:rollouts"


def _steps(row: Rollout) -> list[StepSpec]:
    return [StepSpec.model_validate(s) for s in (row.spec or {}).get("steps") or []]


def _model(session: Session, row: Rollout) -> Model:
    m = session.get(Model, row.model_id)
    assert m is not None
    return m


def _event(session: Session, row: Rollout, model: Model, kind: str, frm: str | None, *,
           actor: str, message: str, evidence: dict[str, Any] | None = None,
           action: str | None = None) -> None:
    now = utcnow()
    session.add(RolloutEvent(rollout_id=row.id or 0, at=now, kind=kind, from_state=frm,
                             to_state=row.state, step=row.step, actor=actor,
                             message=message[:2000], evidence=evidence))
    row.updated_at = now
    session.add(row)
    if action is not None:
        audit.record(session, actor=actor, action=action, target=f"{model.name}/rollouts/{row.id}",
                     before=None if frm is None else {"state": frm},
                     after={"state": row.state, "step": row.step}, reason=message[:1000])
    session.flush()


def _move(session: Session, row: Rollout, model: Model, alias: str, version_id: int | None,
          percent: float | None, actor: str, why: str) -> None:
    number = version_number(session, version_id)
    assert number is not None
    set_alias(session, model.name, alias, AliasMove(version=number, rollout_percent=percent,
                                                    reason=f"rollout {row.id}: {why}"),
              actor=actor)


def _drop(session: Session, row: Rollout, model: Model, alias: str, actor: str, why: str) -> None:
    """Remove ``alias`` if it still points at this rollout's candidate."""
    found = session.exec(select(Alias).where(Alias.model_id == model.id, Alias.name == alias)
                         ).first()
    if found is not None and found.version_id == row.candidate_version_id:
        delete_alias(session, model.name, alias, actor=actor, reason=f"rollout {row.id}: {why}")


def start(session: Session, body: RolloutCreate, *, actor: str,
          now: datetime | None = None) -> Rollout:
    """Create a rollout of ``body.candidate`` and enter its first step (or await approval)."""
    model = get_model(session, body.model, for_update=True)
    prod = session.exec(select(Alias).where(Alias.model_id == model.id,
                                            Alias.name == PRODUCTION)).first()
    if prod is None:
        raise ConflictError(f"model {model.name!r} has no production version to roll out from")
    existing = active_rollout(session, model.id or 0)
    if existing is not None:
        raise ConflictError(f"model {model.name!r} already has an active rollout ({existing.id}, "
                            f"{existing.state}); abort it first")
    candidate_id = None
    if body.strategy == "ab":
        for v in body.variants or []:
            require_ready(get_version(session, model, v.version), model.name)
    else:
        assert body.candidate is not None
        cand = require_ready(get_version(session, model, body.candidate), model.name)
        if cand.id == prod.version_id:
            raise InvalidQueryError(f"version {body.candidate} is already production")
        candidate_id = cand.id
    steps = body.steps or (
        [StepSpec(bake_s=body.horizon_s, timeout_s=body.horizon_s * 2)]
        if body.strategy in ("ab", "shadow") else default_steps(body.strategy))
    if body.strategy == "blue_green" and len(steps) != 2:
        raise InvalidQueryError("a blue_green rollout has two steps: pre-download, then switch")
    spec = body.model_dump(mode="json")
    spec["steps"] = [s.model_dump(mode="json") for s in steps]
    if body.strategy == "shadow" and "guards" not in body.model_fields_set:
        spec["guards"] = [GuardSpec(kind="shadow_agreement", margin=0.1,
                                    min_samples=100).model_dump(mode="json")]
    row = Rollout(model_id=model.id or 0, active_model_id=model.id, strategy=body.strategy,
                  candidate_version_id=candidate_id, baseline_version_id=prod.version_id,
                  state="pending", spec=spec, created_by=actor, reason=body.reason,
                  created_at=now or utcnow(), updated_at=now or utcnow())
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise ConflictError(f"model {model.name!r} already has an active rollout") from None
    _event(session, row, model, "start", None, actor=actor, action="rollout.start",
           message=f"{body.strategy} rollout of {body.candidate or 'variants'} over "
                   f"{version_number(session, prod.version_id)} ({len(steps)} steps)"
                   + (f": {body.reason}" if body.reason else ""))
    if steps[0].approval:
        _await(session, row, model, 0, actor=actor)
    else:
        _enter(session, row, model, 0, actor=actor, now=now or utcnow())
    return row


def _enter(session: Session, row: Rollout, model: Model, k: int, *, actor: str,
           now: datetime) -> None:
    """Enter step ``k``: its alias effect, then ``running``."""
    steps, frm = _steps(row), row.state
    step = steps[k]
    what = f"step {k + 1}/{len(steps)}"
    if row.strategy == "canary":
        what += f": {step.percent:g} % of the fleet"
        _move(session, row, model, CANARY, row.candidate_version_id, step.percent, actor, what)
    elif row.strategy == "waves":
        what += f": wave {step.labels or 'all devices'}"
        _move(session, row, model, CANARY, row.candidate_version_id, 0.0, actor, what)
    elif row.strategy == "blue_green":
        if k == 0:
            row.phase, what = "prefetch", what + ": pre-download and warm the candidate"
        else:
            what += ": switch production to the candidate"
            _move(session, row, model, PRODUCTION, row.candidate_version_id, None, actor,
                  "blue-green switch")
            row.phase, row.switched_at = "switched", now
    elif row.strategy == "shadow":
        what += f": shadow at {float((row.spec or {}).get('shadow_rate', 0)):g} of requests"
        _move(session, row, model, SHADOW, row.candidate_version_id, None, actor, what)
    else:
        what += f": A/B split for {step.bake_s:g} s"
    row.step, row.state, row.step_started_at = k, "running", now
    row.awaiting, row.last_decision = None, None
    serving.bump(session, "serving")  # routing changed: the V2 path reloads its snapshot
    _event(session, row, model, "step", frm, actor=actor, message=what, action="rollout.step")


def _await(session: Session, row: Rollout, model: Model, k: int, *, actor: str,
           evidence: dict[str, Any] | None = None) -> None:
    steps, frm = _steps(row), row.state
    row.step, row.state = k, "awaiting_approval"
    row.awaiting = "promotion" if k >= len(steps) else f"step {k + 1}"
    _event(session, row, model, "await", frm, actor=actor, evidence=evidence,
           message=f"awaiting an operator's approval before {row.awaiting}")


def _finish(session: Session, row: Rollout, model: Model, state: str, kind: str, *, actor: str,
            message: str, action: str, evidence: dict[str, Any] | None = None) -> None:
    frm = row.state
    for alias in (CANARY, SHADOW):
        _drop(session, row, model, alias, actor, f"{kind}: {message}"[:900])
    row.state, row.awaiting, row.active_model_id, row.finished_at = state, None, None, utcnow()
    serving.bump(session, "serving")
    _event(session, row, model, kind, frm, actor=actor, message=message, evidence=evidence,
           action=action)


def _promote(session: Session, row: Rollout, model: Model, *, actor: str, message: str,
             version_id: int | None = None, evidence: dict[str, Any] | None = None) -> None:
    target = version_id or row.candidate_version_id
    _move(session, row, model, PRODUCTION, target, None, actor, f"promoted: {message}"[:900])
    row.step = len(_steps(row))
    _finish(session, row, model, "promoted", "promote", actor=actor, action="rollout.promote",
            message=f"version {version_number(session, target)} promoted to production: "
                    f"{message}", evidence=evidence)


def _rollback(session: Session, row: Rollout, model: Model, *, actor: str, message: str,
              evidence: dict[str, Any] | None = None, aborted: bool = False) -> None:
    if row.strategy == "blue_green" and row.phase == "switched":
        _move(session, row, model, PRODUCTION, row.baseline_version_id, None, actor,
              f"blue-green switch back: {message}"[:900])
        row.phase = "switched_back"
    if aborted:
        _finish(session, row, model, "aborted", "abort", actor=actor, message=message,
                action="rollout.abort", evidence=evidence)
    else:
        _finish(session, row, model, "rolled_back", "rollback", actor=actor, message=message,
                action="rollout.rollback", evidence=evidence)


def _advance(session: Session, row: Rollout, model: Model, decision: dict[str, Any], *,
             now: datetime) -> None:
    steps, k = _steps(row), row.step
    _event(session, row, model, "pass", row.state, actor=CONTROLLER, evidence=decision,
           message=f"step {k + 1}/{len(steps)} passed every guard")
    if k + 1 < len(steps):
        if steps[k + 1].approval:
            _await(session, row, model, k + 1, actor=CONTROLLER)
        else:
            _enter(session, row, model, k + 1, actor=CONTROLLER, now=now)
    elif (row.spec or {}).get("approval"):
        _await(session, row, model, len(steps), actor=CONTROLLER)
    else:
        _promote(session, row, model, actor=CONTROLLER, message="every step passed")


def _wait(session: Session, row: Rollout, model: Model, decision: dict[str, Any],
          message: str) -> None:
    """Keep the decision on the row; a timeline event only when the verdict changes."""
    before = (row.last_decision or {}).get("verdict")
    row.last_decision = decision
    session.add(row)
    if before != decision["verdict"]:
        _event(session, row, model, "wait", row.state, actor=CONTROLLER, message=message,
               evidence=decision)


def resumed(session: Session, row: Rollout) -> None:
    """Note on the timeline that a (re)started controller picked the rollout up."""
    _event(session, row, _model(session, row), "resume", row.state, actor=CONTROLLER,
           message=f"controller started: resuming step {row.step + 1} (started "
                   f"{(row.step_started_at or row.created_at).isoformat()})")


def tick(session: Session, row: Rollout, *, evidence: EvidenceFn | None,
         now: datetime | None = None) -> str | None:
    """Judge a running rollout once; the kind of the transition made (``None``: none)."""
    if row.state != "running":
        return None
    now = now or utcnow()
    model, steps = _model(session, row), _steps(row)
    step = steps[row.step]
    elapsed = (now - (row.step_started_at or row.created_at)).total_seconds()
    if row.strategy == "ab":
        return _tick_ab(session, row, model, step, elapsed, evidence, now)
    j = judge(session, row, model, evidence, now)
    decision = j.as_dict(at=now.isoformat(), elapsed_s=round(elapsed, 3), step=row.step)
    if j.verdict == FAIL:
        _rollback(session, row, model, actor=CONTROLLER, evidence=decision,
                  message=f"guard {', '.join(j.names(FAIL))} breached: {j.reasons(FAIL)}")
        return "rollback"
    if j.verdict == PASS and elapsed >= step.bake_s:
        _advance(session, row, model, decision, now=now)
        return "advance"
    if elapsed >= step.timeout_s:
        waiting = ", ".join(j.names("wait")) or "bake"
        _rollback(session, row, model, actor=CONTROLLER, evidence=decision,
                  message=f"timeout after {step.timeout_s:g} s: step {row.step + 1} did not "
                          f"pass (waiting: {waiting}): {j.reasons('wait')}")
        return "rollback"
    msg = (f"baking: every guard passes, {step.bake_s - elapsed:.0f} s of bake left"
           if j.verdict == PASS else f"waiting for evidence: {j.reasons('wait')}")
    _wait(session, row, model, decision, msg)
    return None


def _tick_ab(session: Session, row: Rollout, model: Model, step: StepSpec, elapsed: float,
             evidence: EvidenceFn | None, now: datetime) -> str | None:
    safety = judge_ab_safety(session, row, model, evidence)
    if safety is not None and safety.verdict == FAIL:
        _rollback(session, row, model, actor=CONTROLLER,
                  evidence=safety.as_dict(at=now.isoformat(), elapsed_s=round(elapsed, 3)),
                  message=f"guard {', '.join(safety.names(FAIL))} breached: "
                          f"{safety.reasons(FAIL)}")
        return "rollback"
    result = judge_ab(session, row, model, evidence)
    decision: dict[str, Any] = {"verdict": "wait", "at": now.isoformat(),
                                "elapsed_s": round(elapsed, 3),
                                "ab": None if result is None else result.as_dict()}
    if elapsed < step.bake_s or result is None or not result.sufficient:
        if elapsed >= step.timeout_s:
            why = "no evidence source" if result is None else result.reason
            _rollback(session, row, model, actor=CONTROLLER, evidence=decision,
                      message=f"timeout after {step.timeout_s:g} s: the A/B test did not run "
                              f"({why})")
            return "rollback"
        _wait(session, row, model, decision, "A/B: collecting per-variant evidence"
              + ("" if result is None else f" ({result.reason or 'horizon not reached'})"))
        return None
    decision["verdict"] = PASS
    winner = next(v for v in (row.spec or {}).get("variants", []) if v["name"] == result.winner)
    row.last_decision = decision
    _event(session, row, model, "ab_result", row.state, actor=CONTROLLER, evidence=decision,
           message=f"{result.test}: {result.reason}")
    if result.significant and (row.spec or {}).get("auto_promote") \
            and not (row.spec or {}).get("approval"):
        _promote(session, row, model, actor=CONTROLLER, message=result.reason,
                 version_id=get_version(session, model, int(winner["version"])).id,
                 evidence=decision)
        return "promote"
    _await(session, row, model, len(_steps(row)), actor=CONTROLLER, evidence=decision)
    return "await"


def approve(session: Session, row: Rollout, body: RolloutApprove, *, actor: str,
            now: datetime | None = None) -> Rollout:
    """Release what the rollout awaits: the next step, or the promotion."""
    if row.state != "awaiting_approval":
        raise ConflictError(f"rollout {row.id} is {row.state}, not awaiting approval")
    model = _model(session, row)
    _event(session, row, model, "approve", row.state, actor=actor, action="rollout.approve",
           message=f"approved {row.awaiting}" + (f": {body.reason}" if body.reason else ""))
    if row.awaiting != "promotion":
        _enter(session, row, model, row.step, actor=actor, now=now or utcnow())
        return row
    version_id = None
    if row.strategy == "ab":
        name = body.variant or ((row.last_decision or {}).get("ab") or {}).get("winner")
        found = [v for v in (row.spec or {}).get("variants", []) if v["name"] == name]
        if not found:
            raise InvalidQueryError(f"name the variant to promote (one of "
                                    f"{', '.join(v['name'] for v in row.spec['variants'])})")
        version_id = get_version(session, model, int(found[0]["version"])).id
    elif body.variant is not None:
        raise InvalidQueryError("only an ab rollout takes a variant")
    _promote(session, row, model, actor=actor, version_id=version_id,
             message=f"approved by {actor}" + (f": {body.reason}" if body.reason else ""))
    return row


def abandon(session: Session, row: Rollout, reason: str) -> None:
    """Roll back a rollout the controller cannot move on (e.g. its candidate or a variant is
    no longer READY); a rollout that has already ended is left as it is."""
    if row.state in ACTIVE_STATES:
        _rollback(session, row, _model(session, row), actor=CONTROLLER,
                  message=f"the rollout cannot proceed: {reason}")


def abort(session: Session, row: Rollout, body: RolloutAbort, *, actor: str) -> Rollout:
    """End an active rollout: every device and caller back on the baseline."""
    if row.state not in ACTIVE_STATES:
        raise ConflictError(f"rollout {row.id} has already ended ({row.state})")
    _rollback(session, row, _model(session, row), actor=actor, message=body.reason, aborted=True)
    return row

