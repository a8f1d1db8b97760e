"""Model cards: a description of a version built from what the registry already stores.

:func:`build_card` assembles an :class:`edgefleet.cards.ModelCard`:

* **intended use**: the model's task and description, the plan's class labels and features;
* **plan**: architecture, parameter count, plan and weights sizes, the signing key;
* **lineage**: authored (a full plan upload) or federated (``federated_run``): the run's
  published rounds with their clients and holdout accuracy, participations, distinct Flower
  nodes when the rounds recorded them, the strategy, who started the run and on what fleet drift
  (its ``run.start`` audit record), how it ended (``run.end``), and this round's merged drift
  summary (rows and labels seen);
* **evaluation**: holdout figures (metrics ``holdout.*``), the other metrics, the devices'
  labelled accuracy and the feedback accuracy of this version and up to
  :data:`ANCESTORS` lineage ancestors (:func:`registry.version_evidence.version_evidence` since
  each was published), and per class: training examples (the drift reference), the devices'
  labelled examples and accuracy and their predictions (telemetry drift summaries of this
  version), and the REST path's predictions;
* **drift reference**: rows, features and class counts of the plan's reference profile;
* **promotion**: the rollouts that had this version as candidate (state, who approved, who
  promoted, from :class:`~registry.models.Rollout` and its timeline) and every alias move onto it;
* **limitations**: the operator's text (:func:`set_limitations`, audited ``card.limitations``).

Rendering to Markdown and HTML is :mod:`registry.card_render`.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from edgefleet.cards import (
    CardDeviceAccuracy,
    CardEvaluation,
    CardIntendedUse,
    CardLineage,
    CardPlan,
    CardPromotion,
    CardRollout,
    ModelCard,
)
from edgefleet.plan import PlanManifest
from registry import audit
from registry.card_lineage import federated_run, per_class
from registry.catalog import get_model
from registry.models import (
    Alias,
    AliasEvent,
    Model,
    ModelVersion,
    Rollout,
    RolloutEvent,
    VersionCardNote,
    utcnow,
)
from registry.version_evidence import version_evidence
from registry.versions import get_version, manifest_of, reference_of

__all__ = ["ANCESTORS", "build_card", "set_limitations"]

#: Lineage ancestors whose device accuracy a card shows besides the version's own.
ANCESTORS = 3


def build_card(session: Session, model_name: str, number: int) -> ModelCard:
    """The card of ``model_name`` version ``number`` (:class:`NotFoundError` when unknown)."""
    model = get_model(session, model_name)
    version = get_version(session, model, number)
    manifest = manifest_of(version)
    note = session.get(VersionCardNote, version.id)
    return ModelCard(
        model=model.name,
        version=version.number,
        status=version.status.value,
        generated_at=utcnow(),
        intended_use=_intended_use(model, manifest),
        plan=_plan(version, manifest),
        lineage=_lineage(session, model, version),
        evaluation=_evaluation(session, model, version, manifest),
        drift_reference=_drift_reference(version),
        promotion=_promotion(session, model, version),
        limitations=note.limitations if note else "",
        limitations_by=note.updated_by if note else None,
        limitations_at=note.updated_at if note else None,
    )


def set_limitations(
    session: Session, model_name: str, number: int, text: str, *, actor: str
) -> VersionCardNote:
    """Replace the known limitations of a version (audited as ``card.limitations``)."""
    model = get_model(session, model_name)
    version = get_version(session, model, number)
    note = session.get(VersionCardNote, version.id, with_for_update=True)
    before = {"limitations": note.limitations} if note else None
    if note is None:
        note = VersionCardNote(version_id=version.id or 0, updated_by=actor)
    note.limitations, note.updated_by, note.updated_at = text, actor, utcnow()
    session.add(note)
    session.flush()
    audit.record(session, actor=actor, action="card.limitations",
                 target=f"{model.name}/{number}", before=before, after={"limitations": text})
    return note


def _intended_use(model: Model, manifest: PlanManifest) -> CardIntendedUse:
    return CardIntendedUse(
        task=model.task,
        description=model.description,
        labels=list(manifest.output.class_labels),
        n_features=manifest.input.n_features,
        feature_names=list(manifest.input.feature_names),
    )


def _plan(version: ModelVersion, manifest: PlanManifest) -> CardPlan:
    return CardPlan(
        architecture=dict(manifest.architecture),
        parameters=manifest.n_parameters,
        plan_sha256=version.plan_sha256,
        plan_bytes=version.plan_size,
        weights_bytes=version.weights_size,
        built_with=dict(manifest.built_with),
        signed_by=version.signing_key_id,
    )


def _number_of(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    row = session.get(ModelVersion, version_id)
    return row.number if row else None


def _lineage(session: Session, model: Model, version: ModelVersion) -> CardLineage:
    run = federated_run(session, model, version) if version.federated_run else None
    return CardLineage(
        kind="federated" if run else "authored",
        parent_version=_number_of(session, version.parent_version_id),
        training_data_ref=version.training_data_ref,
        created_by=version.created_by,
        created_at=version.created_at,
        hyperparameters={k: v for k, v in version.hyperparameters.items() if k != "round"},
        federated=run,
    )


def _ancestors(session: Session, version: ModelVersion) -> list[ModelVersion]:
    chain = [version]
    while len(chain) <= ANCESTORS and chain[-1].parent_version_id is not None:
        parent = session.get(ModelVersion, chain[-1].parent_version_id)
        if parent is None or parent in chain:
            break
        chain.append(parent)
    return chain


def _evaluation(
    session: Session, model: Model, version: ModelVersion, manifest: PlanManifest
) -> CardEvaluation:
    evidence = [
        version_evidence(session, model=model.name, version=v.number, since=v.created_at)
        for v in _ancestors(session, version)
    ]
    devices = [
        CardDeviceAccuracy(
            version=ev.version, devices=ev.devices, labelled=ev.device_labelled,
            correct=ev.device_correct, accuracy=ev.device_accuracy,
            feedback_labelled=ev.feedback_labelled, feedback_accuracy=ev.feedback_accuracy,
        )
        for ev in evidence
    ]
    own = evidence[0]
    metrics = dict(version.metrics)
    return CardEvaluation(
        holdout={k.removeprefix("holdout."): v for k, v in metrics.items()
                 if k.startswith("holdout.")},
        metrics={k: v for k, v in metrics.items() if not k.startswith("holdout.")},
        devices=devices,
        per_class=per_class(session, version, manifest, reference_of(version), own.predictions),
    )


def _drift_reference(version: ModelVersion) -> dict[str, Any] | None:
    reference = reference_of(version)
    if reference is None:
        return None
    return {
        "n_samples": reference.n_samples,
        "features": len(reference.features),
        "class_counts": list(reference.class_counts),
        "has_prediction_profile": reference.prediction_counts is not None,
        "fingerprint": reference.fingerprint,
    }


def _promotion(session: Session, model: Model, version: ModelVersion) -> CardPromotion:
    rollouts = session.exec(
        select(Rollout)
        .where(Rollout.model_id == model.id, Rollout.candidate_version_id == version.id)
        .order_by(col(Rollout.created_at))
    ).all()
    cards = [_rollout(session, r) for r in rollouts]
    moves = session.exec(
        select(AliasEvent)
        .where(AliasEvent.model_id == model.id, AliasEvent.to_version_id == version.id)
        .order_by(col(AliasEvent.at), col(AliasEvent.id))
    ).all()
    production = session.exec(
        select(Alias).where(Alias.model_id == model.id, Alias.name == "production",
                            Alias.version_id == version.id)
    ).first()
    return CardPromotion(
        rollouts=cards,
        alias_moves=[{"alias": m.alias, "at": m.at.isoformat(), "actor": m.actor,
                      "reason": m.reason, "rollout_percent": m.rollout_percent} for m in moves],
        production_since=production.updated_at if production else None,
    )


def _rollout(session: Session, rollout: Rollout) -> CardRollout:
    events = session.exec(
        select(RolloutEvent)
        .where(RolloutEvent.rollout_id == rollout.id)
        .order_by(col(RolloutEvent.at), col(RolloutEvent.id))
    ).all()
    approved = [e.actor for e in events if "approv" in e.kind]
    promoted = [e.actor for e in events if e.to_state == "promoted"]
    return CardRollout(
        id=rollout.id or 0,
        strategy=rollout.strategy,
        state=rollout.state,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        finished_at=rollout.finished_at,
        approved_by=list(dict.fromkeys(approved)),
        promoted_by=promoted[-1] if promoted else None,
    )

