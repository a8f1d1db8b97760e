"""The federated-run and per-class sections of a model card (see :mod:`registry.cards`).

:func:`federated_run` reads the versions published by the same run (their lineage fields and
metrics) and the run's ``run.start``/``run.end`` audit records; :func:`per_class` combines the
drift reference's training class counts, the per-class labelled counts and predictions of this
version's telemetry drift summaries, and the REST path's predictions and feedback-labelled accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.cards import CardClass, CardFederatedRun, CardRound
from edgefleet.drift.reference import ReferenceProfile
from edgefleet.plan import PlanManifest
from registry.audit import AuditQuery, list_records
from registry.models import InferenceRecord, Model, ModelVersion, TelemetryRecord

__all__ = ["MAX_SUMMARIES", "federated_run", "per_class"]

#: Most recent telemetry drift summaries of a version that the per-class figures add up.
MAX_SUMMARIES = 5000


def federated_run(session: Session, model: Model, version: ModelVersion) -> CardFederatedRun:
    """What the card says about the federated run that produced ``version``."""
    run = version.federated_run or ""
    rows = session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.federated_run == run)
        .order_by(col(ModelVersion.number))
    ).all()
    upto = [r for r in rows if r.number <= version.number]
    rounds = [
        CardRound(version=r.number, round=r.federated_round, clients=r.num_clients,
                  holdout_accuracy=r.metrics.get("holdout.accuracy"))
        for r in rows
    ]
    nodes: set[Any] = set()
    recorded = False
    for r in upto:
        accepted = (r.hyperparameters.get("round") or {}).get("accepted")
        if isinstance(accepted, list):
            recorded = True
            nodes.update(a for a in accepted if isinstance(a, int | str))
    start, end = _run_records(session, model.name, run)
    return CardFederatedRun(
        run=run,
        round=version.federated_round,
        rounds=rounds,
        participants_this_round=version.num_clients,
        participations=sum(r.num_clients or 0 for r in upto),
        distinct_participants=len(nodes) if recorded else None,
        strategy=version.strategy,
        started_by=start.actor if start else None,
        started_at=start.at if start else None,
        ended=(end.after or {}).get("outcome") if end else None,
        trigger=(start.after or {}).get("fleet_drift") if start else None,
        round_drift=_round_drift(version.drift_summary),
    )


def _run_records(session: Session, model: str, run: str) -> tuple[Any, Any]:
    records = list_records(session, AuditQuery(action="run.*", target=f"{model}/run/{run}",
                                                limit=1000))
    starts = [r for r in records if r.action == "run.start"]
    ends = [r for r in records if r.action == "run.end"]
    return (starts[0] if starts else None), (ends[-1] if ends else None)


def _round_drift(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    total = [int(x) for x in summary.get("label_total") or []]
    correct = [int(x) for x in summary.get("label_correct") or []]
    return {
        "rows": summary.get("n"),
        "measured_on_version": summary.get("version"),
        "labelled": sum(total),
        "labelled_accuracy": sum(correct) / sum(total) if sum(total) else None,
    }


def _device_class_counts(session: Session, version: ModelVersion, n: int) -> dict[str, list[int]]:
    """Summed ``label_total``, ``label_correct`` and ``class_counts`` of the version's reports."""
    sums = {"label_total": [0] * n, "label_correct": [0] * n, "class_counts": [0] * n}
    found = False
    drifts = session.exec(
        select(TelemetryRecord.drift)
        .where(TelemetryRecord.version_id == version.id, col(TelemetryRecord.drift).is_not(None))
        .order_by(col(TelemetryRecord.window_end).desc())
        .limit(MAX_SUMMARIES)
    ).all()
    for drift in drifts:
        if not isinstance(drift, dict):
            continue
        for key, acc in sums.items():
            values = drift.get(key) or []
            if len(values) == n:
                found = True
                for i, value in enumerate(values):
                    acc[i] += int(value)
    return sums if found else {}


def _rest_labelled(session: Session, model: str, version: int) -> dict[str, tuple[int, int]]:
    """Per true label: the REST instances labelled by feedback, and how many were right."""
    right = sa.func.sum(sa.case((col(InferenceRecord.label) == col(InferenceRecord.true_label), 1),
                                else_=0))
    rows = session.execute(
        sa.select(col(InferenceRecord.true_label), sa.func.count(), right)
        .where(col(InferenceRecord.model) == model, col(InferenceRecord.version) == version,
               col(InferenceRecord.true_label).is_not(None))
        .group_by(col(InferenceRecord.true_label))
    ).all()
    return {str(label): (int(n), int(ok or 0)) for label, n, ok in rows}


def per_class(
    session: Session,
    version: ModelVersion,
    manifest: PlanManifest,
    reference: ReferenceProfile | None,
    rest_predictions: Mapping[str, int],
) -> list[CardClass]:
    """One row per class label (figures the registry lacks are ``None``)."""
    labels: Sequence[str] = manifest.output.class_labels
    n = len(labels)
    training = list(reference.class_counts) if reference and len(reference.class_counts) == n \
        else None
    device = _device_class_counts(session, version, n)
    model = session.get(Model, version.model_id)
    rest = _rest_labelled(session, model.name, version.number) if model else {}
    out = []
    for i, label in enumerate(labels):
        total = device["label_total"][i] if device else None
        correct = device["label_correct"][i] if device else None
        out.append(CardClass(
            label=label,
            training_examples=training[i] if training else None,
            device_labelled=total,
            device_accuracy=(correct / total) if total and correct is not None else None,
            device_predictions=device["class_counts"][i] if device else None,
            rest_predictions=rest_predictions.get(label, 0) if rest_predictions else None,
            rest_labelled=rest[label][0] if label in rest else None,
            rest_accuracy=rest[label][1] / rest[label][0] if label in rest else None,
        ))
    return out
