"""Publishing a version: verify the uploaded artifacts, commit them, record the version READY.

What is checked, in order, before anything is committed (any failure leaves the store and the
database as they were):

1. each artifact hashes to the sha256 the client declared and fits the size limit (done while
   streaming, by :meth:`registry.store.ArtifactStore.stage`);
2. the manifest parses, and the plan bytes are the ones it describes (sha256 and size);
3. the weights parse (safetensors) and match the manifest's weight spec (names, shapes, dtypes)
   and, when they say so, the plan they were made for;
4. the plan *loads* in the TFLite interpreter with those weights and answers a smoke inference
   with finite probabilities of the right shape;
5. the input and output schema agree with the model's earlier versions (aliases swap versions
   under running applications, so they must be interchangeable).

A *weights-only* version (a new federated round) uploads only weights; its plan and manifest are
those of ``plan_from_version`` (or, by default, of its lineage parent), already in the store and
re-hashed before they are reused (a damaged base is refused).

Every new version is signed (:func:`registry.signing.sign_version`) before it is inserted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func
from sqlmodel import Session, select

from edgefleet.errors import EdgeFleetError, InterpreterUnavailable
from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.wire import VersionPublish
from registry import audit
from registry.catalog import get_model
from registry.errors import (
    ArtifactRejectedError,
    DamagedArtifactError,
    IncompatibleSchemaError,
    InvalidQueryError,
    NotFoundError,
)
from registry.models import Model, ModelVersion, VersionMetric, VersionStatus, utcnow
from registry.signing import Signer, sign_version
from registry.store import ArtifactStore, StagedBlob
from registry.versions import get_version, manifest_of

__all__ = ["UploadedArtifacts", "publish_version", "schema_of", "smoke_test"]


@dataclass
class UploadedArtifacts:
    """Staged (received, hashed, not yet committed) artifacts of one upload."""

    weights: StagedBlob
    plan: StagedBlob | None = None
    manifest: StagedBlob | None = None


@dataclass(frozen=True)
class _Plan:
    manifest: PlanManifest
    plan: bytes
    manifest_sha256: str
    manifest_size: int


def publish_version(
    session: Session,
    store: ArtifactStore,
    model_name: str,
    meta: VersionPublish,
    artifacts: UploadedArtifacts,
    *,
    actor: str,
    interpreter: str = "auto",
    signer: Signer | None = None,
) -> ModelVersion:
    """Verify ``artifacts`` (see the module notes), commit them and add a READY version,
    signed by ``signer`` (:mod:`registry.signing`; unsigned without one).

    Raises
    ------
    NotFoundError
        No such model, or no such source/parent version.
    ArtifactRejectedError
        The manifest, plan or weights are unusable or do not belong together.
    IncompatibleSchemaError
        The plan's input/output differ from the model's.
    """
    model = get_model(session, model_name, for_update=True)
    source = _resolve_plan(session, store, model, meta, artifacts)
    weights_bytes = artifacts.weights.read_bytes()
    try:
        weights = weights_from_bytes(weights_bytes, manifest=source.manifest)
    except EdgeFleetError as exc:
        raise ArtifactRejectedError(f"weights rejected: {exc}") from exc
    _check_schema(model, source.manifest)
    smoke_test(source.plan, source.manifest, weights, interpreter=interpreter)
    parent_id = _parent_id(session, model, meta)

    for blob in (artifacts.plan, artifacts.manifest, artifacts.weights):
        if blob is not None:
            store.commit(blob)
    number = _next_number(session, model)
    lineage = meta.lineage
    version = ModelVersion(
        model_id=model.id or 0,
        number=number,
        status=VersionStatus.READY,
        plan_sha256=source.manifest.plan_sha256,
        plan_size=source.manifest.plan_size,
        weights_sha256=artifacts.weights.sha256,
        weights_size=artifacts.weights.size,
        manifest_sha256=source.manifest_sha256,
        manifest_size=source.manifest_size,
        manifest=json.loads(source.manifest.model_dump_json()),
        description=meta.description,
        metrics=dict(meta.metrics),
        hyperparameters=dict(meta.hyperparameters),
        training_data_ref=lineage.training_data_ref,
        parent_version_id=parent_id,
        federated_run=lineage.federated_run,
        federated_round=lineage.federated_round,
        num_clients=lineage.num_clients,
        strategy=lineage.strategy,
        drift_summary=lineage.drift_summary,
        created_by=actor,
    )
    if signer is not None:
        sign_version(version, model.name, signer, source.manifest)
    session.add(version)
    session.flush()
    for name, value in meta.metrics.items():
        session.add(VersionMetric(version_id=version.id or 0, name=name, value=float(value)))
    if model.input_schema is None:
        model.input_schema, model.output_schema = schema_of(source.manifest)
    model.updated_at = utcnow()
    session.add(model)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="version.publish",
        target=f"{model.name}/{number}",
        after=_audit_summary(version),
        reason=meta.description or None,
    )
    return version


def _audit_summary(version: ModelVersion) -> dict[str, Any]:
    return {
        "status": version.status.value,
        "weights_sha256": version.weights_sha256,
        "plan_sha256": version.plan_sha256,
        "parent_version_id": version.parent_version_id,
        "federated_run": version.federated_run,
        "federated_round": version.federated_round,
        "signed_by": version.signing_key_id,
    }


def _resolve_plan(
    session: Session,
    store: ArtifactStore,
    model: Model,
    meta: VersionPublish,
    artifacts: UploadedArtifacts,
) -> _Plan:
    if artifacts.plan is not None:
        if artifacts.manifest is None:
            raise ArtifactRejectedError("a plan upload needs its manifest")
        if meta.plan_from_version is not None:
            raise ArtifactRejectedError("upload a plan or name plan_from_version, not both")
        try:
            manifest = PlanManifest.from_json(artifacts.manifest.read_bytes())
            plan = artifacts.plan.read_bytes()
            manifest.check_plan_bytes(plan)
        except EdgeFleetError as exc:
            raise ArtifactRejectedError(f"manifest rejected: {exc}") from exc
        return _Plan(manifest, plan, artifacts.manifest.sha256, artifacts.manifest.size)
    if artifacts.manifest is not None:
        raise ArtifactRejectedError("a manifest upload needs its plan")
    number = meta.plan_from_version or meta.lineage.parent_version
    if number is None:
        raise ArtifactRejectedError(
            "no plan uploaded: upload plan and manifest, or name plan_from_version "
            "(or lineage.parent_version) to reuse that version's plan"
        )
    try:
        base = get_version(session, model, number)
    except NotFoundError as exc:
        raise InvalidQueryError(f"cannot reuse a plan: {exc}") from exc
    if base.status not in (VersionStatus.READY, VersionStatus.ARCHIVED):  # not DAMAGED
        raise ArtifactRejectedError(f"version {number} is {base.status.value}; no usable plan")
    try:
        plan = store.read_verified(base.plan_sha256, base.plan_size)
        store.read_verified(base.manifest_sha256, base.manifest_size)
    except (NotFoundError, DamagedArtifactError) as exc:
        raise ArtifactRejectedError(
            f"the plan of version {number} is unusable (damaged or missing): {exc}"
        ) from exc
    return _Plan(manifest_of(base), plan, base.manifest_sha256, base.manifest_size)


def smoke_test(
    plan: bytes,
    manifest: PlanManifest,
    weights: dict[str, np.ndarray],
    *,
    interpreter: str = "auto",
) -> None:
    """Load the plan with ``weights`` and run one inference on zeros; refuse it otherwise."""
    from edgefleet.runtime import PlanRuntime

    try:
        runtime = PlanRuntime.from_bytes(plan, manifest, weights, interpreter=interpreter)
        x = np.zeros((1, *manifest.input.sample_shape), dtype=np.float32)
        probs = runtime.predict(x)
    except InterpreterUnavailable:
        raise
    except (EdgeFleetError, ValueError, RuntimeError) as exc:
        raise ArtifactRejectedError(f"plan does not load: {exc}") from exc
    want = (1, manifest.output.n_classes)
    if probs.shape != want or not np.all(np.isfinite(probs)):
        raise ArtifactRejectedError(
            f"plan answered a smoke inference with shape {probs.shape} (expected {want}) "
            "or non-finite values"
        )


def schema_of(manifest: PlanManifest) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output schema a model exposes, from its plan manifest."""
    inp = manifest.input
    return (
        {
            "name": inp.name,
            "dtype": inp.dtype,
            "shape": list(inp.shape),
            "feature_names": list(inp.feature_names),
        },
        {"name": manifest.output.name, "class_labels": list(manifest.output.class_labels)},
    )


def _check_schema(model: Model, manifest: PlanManifest) -> None:
    if model.input_schema is None:
        return
    have = (model.input_schema, model.output_schema)
    new = schema_of(manifest)
    if have != new:
        raise IncompatibleSchemaError(
            f"the plan's input/output differ from model {model.name!r}'s: "
            f"{json.dumps(new)} vs {json.dumps(have)}; register it as a new model"
        )


def _parent_id(session: Session, model: Model, meta: VersionPublish) -> int | None:
    number = meta.lineage.parent_version
    if number is None:
        return None
    try:
        return get_version(session, model, number).id
    except NotFoundError as exc:
        raise InvalidQueryError(f"lineage.parent_version: {exc}") from exc


def _next_number(session: Session, model: Model) -> int:
    current = session.exec(
        select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)
    ).one()
    return int(current or 0) + 1
