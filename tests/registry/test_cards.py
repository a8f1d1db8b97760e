"""Model cards built from the registry's own records (SQLite and PostgreSQL): intended use, plan,
lineage of an authored and a federated version, devices' labelled accuracy by version and per
class, the drift reference, promotion (alias moves, a rollout's approver), limitations, and the
Markdown and HTML renderings."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import Engine

from edgefleet.datasets import Dataset
from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.wire import (
    AliasMove,
    EnrollRequest,
    InferenceStats,
    LocalEvaluation,
    TelemetryReport,
)
from registry import audit
from registry.aliases import set_alias
from registry.card_render import to_html, to_markdown
from registry.cards import build_card, set_limitations
from registry.db import session_scope
from registry.devices import enroll, get_device
from registry.errors import NotFoundError
from registry.models import Rollout, RolloutEvent, utcnow
from registry.store import ArtifactStore
from registry.telemetry import record_report
from registry.versions import get_version, reference_of
from tests.registry.support import PlanFiles, create_model, publish, publish_plan

FEDERATED = {
    "plan_from_version": 1,
    "metrics": {"holdout.accuracy": 0.91, "holdout.loss": 0.3, "round.accepted": 3.0},
    "hyperparameters": {"strategy": "fedavg", "round": {"accepted": [11, 12, 13]}},
    "lineage": {"parent_version": 1, "federated_run": "run-9", "federated_round": 1,
                "num_clients": 3, "strategy": "fedavg"},
}


@pytest.fixture
def registry(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    """digits v1 (authored, production), v2 and v3 (rounds 1 and 2 of run-9, v3 canary)."""
    create_model(engine, "digits", description="handwritten digits, 8x8")
    publish_plan(engine, store, plan_files, "digits", metrics={"holdout.accuracy": 0.8})
    with session_scope(engine, write=True) as s:
        audit.record(s, actor="admin:agg", action="run.start", target="digits/run/run-9",
                     after={"outcome": "running", "fleet_drift": {"signals": ["input"],
                                                                  "score": 0.4}})
    publish(engine, store, "digits", weights=plan_files.perturbed_weights(1), meta=FEDERATED,
            actor="admin:agg")
    second = {**FEDERATED, "metrics": {"holdout.accuracy": 0.93},
              "hyperparameters": {"round": {"accepted": [12, 13, 14, 15]}},
              "lineage": {**FEDERATED["lineage"], "parent_version": 2,  # type: ignore[dict-item]
                          "federated_round": 2, "num_clients": 4}}
    publish(engine, store, "digits", weights=plan_files.perturbed_weights(2), meta=second,
            actor="admin:agg")
    with session_scope(engine, write=True) as s:
        audit.record(s, actor="admin:agg", action="run.end", target="digits/run/run-9",
                     after={"outcome": "completed"})
        set_alias(s, "digits", "production", AliasMove(version=1), actor="admin:alice")
        set_alias(s, "digits", "canary", AliasMove(version=3, reason="gate: +0.02"),
                  actor="admin:agg")
    return engine


def telemetry(engine: Engine, digits_data: Dataset, device: str, version: int) -> None:
    """One report of ``version`` from ``device``: local evaluation and a labelled drift summary."""
    with session_scope(engine, write=True) as s:
        v = get_version(s, "digits", version)
        reference = reference_of(v)
        assert reference is not None
        acc = DriftAccumulator(reference, model="digits", version=version)
        x, y = digits_data.x_test[:40], digits_data.y_test[:40]
        probs = np.eye(10)[np.where(np.arange(40) % 4 == 0, (y + 1) % 10, y)]  # 3 of 4 right
        acc.update(x, probs, y)
        now = utcnow()
        rep = TelemetryReport(
            idempotency_key=uuid.uuid4().hex, model="digits", version=version,
            window_start=now - timedelta(minutes=5), window_end=now,
            inference=InferenceStats(local=40), local_eval=LocalEvaluation(
                n_examples=40, accuracy=0.75, loss=0.5),
            drift=acc.to_summary())
        record_report(s, get_device(s, device), rep)


def test_an_authored_version_card(registry: Engine, digits_data: Dataset) -> None:
    with session_scope(registry, write=True) as s:
        enroll(s, EnrollRequest(enrollment_token="t", device_id="pi-1", model="digits"))
    telemetry(registry, digits_data, "pi-1", 1)
    with session_scope(registry) as s:
        card = build_card(s, "digits", 1)
    assert card.intended_use.task == "classification"
    assert card.intended_use.labels == [str(i) for i in range(10)]
    assert card.intended_use.description == "handwritten digits, 8x8"
    assert card.plan.parameters == 64 * 64 + 64 + 64 * 10 + 10 and card.plan.plan_bytes > 0
    assert card.lineage.kind == "authored" and card.lineage.federated is None
    assert card.evaluation.holdout == {"accuracy": 0.8}
    ((own),) = card.evaluation.devices
    assert (own.version, own.devices, own.labelled, own.correct) == (1, 1, 40, 30)
    assert own.accuracy == pytest.approx(0.75)
    classes = {c.label: c for c in card.evaluation.per_class}
    assert sum(c.device_labelled or 0 for c in classes.values()) == 40
    assert sum(c.training_examples or 0 for c in classes.values()) == (
        card.drift_reference or {})["n_samples"]
    labelled = [c for c in classes.values() if c.device_labelled]
    assert all(c.device_accuracy is not None for c in labelled)
    assert card.promotion.production_since is not None
    assert [m["actor"] for m in card.promotion.alias_moves] == ["admin:alice"]


def test_a_federated_version_card_shows_its_run(registry: Engine) -> None:
    with session_scope(registry) as s:
        card = build_card(s, "digits", 3)
    lin = card.lineage
    assert lin.kind == "federated" and lin.parent_version == 2 and lin.created_by == "admin:agg"
    run = lin.federated
    assert run is not None
    assert (run.run, run.round, run.strategy) == ("run-9", 2, "fedavg")
    assert [(r.version, r.round, r.clients, r.holdout_accuracy) for r in run.rounds] == [
        (2, 1, 3, 0.91), (3, 2, 4, 0.93)]
    assert run.participants_this_round == 4 and run.participations == 7
    assert run.distinct_participants == 5  # nodes 11..15
    assert run.started_by == "admin:agg" and run.ended == "completed"
    assert run.trigger == {"signals": ["input"], "score": 0.4}
    assert [d.version for d in card.evaluation.devices] == [3, 2, 1]
    assert card.evaluation.holdout == {"accuracy": 0.93}
    assert card.promotion.rollouts == [] and card.promotion.production_since is None
    assert [(m["alias"], m["actor"], m["reason"]) for m in card.promotion.alias_moves] == [
        ("canary", "admin:agg", "gate: +0.02")]


def test_the_rollout_that_promoted_a_version_and_its_approver(registry: Engine) -> None:
    with session_scope(registry, write=True) as s:
        v3, v1 = get_version(s, "digits", 3), get_version(s, "digits", 1)
        rollout = Rollout(model_id=v3.model_id, strategy="canary", candidate_version_id=v3.id,
                          baseline_version_id=v1.id, state="promoted", created_by="admin:alice",
                          finished_at=utcnow())
        s.add(rollout)
        s.flush()
        for kind, to, actor in [("start", "running", "admin:alice"),
                                ("approve", "running", "admin:bob"),
                                ("promote", "promoted", "system:rollouts")]:
            s.add(RolloutEvent(rollout_id=rollout.id or 0, kind=kind, to_state=to, actor=actor))
    with session_scope(registry) as s:
        card = build_card(s, "digits", 3)
    ((r),) = card.promotion.rollouts
    assert (r.strategy, r.state, r.created_by) == ("canary", "promoted", "admin:alice")
    assert r.approved_by == ["admin:bob"] and r.promoted_by == "system:rollouts"


def test_limitations_are_audited_and_rendered_escaped(registry: Engine) -> None:
    text = "Not for handwriting outside 8x8 scans.\nUnreliable on <script>alert(1)</script> input."
    with session_scope(registry, write=True) as s:
        set_limitations(s, "digits", 3, text, actor="admin:alice")
    with session_scope(registry) as s:
        card = build_card(s, "digits", 3)
        records = audit.list_records(s, audit.AuditQuery(action="card.limitations"))
        assert audit.verify(s).ok
    assert card.limitations == text and card.limitations_by == "admin:alice"
    assert [(r.actor, r.target) for r in records] == [("admin:alice", "digits/3")]
    md = to_markdown(card)
    for fact in ("# Model card: digits v3", "run-9", "| 3 | 2 | 4 | 0.93 |", "admin:agg",
                 "Not for handwriting", "holdout accuracy"):
        assert fact in md, fact
    page = to_html(card)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<h2>Lineage</h2>" in page and "run-9" in page


def test_an_unknown_version_has_no_card(registry: Engine) -> None:
    with session_scope(registry) as s, pytest.raises(NotFoundError):
        build_card(s, "digits", 99)
    with session_scope(registry, write=True) as s, pytest.raises(NotFoundError):
        set_limitations(s, "digits", 99, "x", actor="admin:a")
    with session_scope(registry) as s:
        assert audit.list_records(s, audit.AuditQuery(action="card.*")) == []
