"""Publishing versions: verified uploads, weights-only versions, lineage, life cycle."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from edgefleet.plan import PlanManifest, sha256_bytes
from registry.catalog import get_model, model_public, update_model
from registry.db import session_scope
from registry.errors import (
    AlreadyExistsError,
    ArtifactRejectedError,
    ConflictError,
    IncompatibleSchemaError,
    InvalidQueryError,
    InvalidTransitionError,
    NotFoundError,
)
from registry.models import (
    ModelUpdate,
    ModelVersion,
    VersionMetric,
    VersionStatus,
    VersionStatusUpdate,
)
from registry.store import ArtifactStore
from registry.versions import change_status, get_version, list_versions, version_info
from tests.registry.support import (
    PlanFiles,
    create_model,
    model_with_versions,
    publish,
    publish_plan,
)


def count_versions(engine: Engine) -> int:
    with session_scope(engine) as s:
        return s.exec(select(func.count()).select_from(ModelVersion)).one()


def blobs(store: ArtifactStore) -> set[str]:
    return {p.name for p in store.blobs.rglob("*") if p.is_file()}


def test_models_are_unique_and_described(engine: Engine) -> None:
    create_model(engine, "digits", task="classification", tags=["vision", "demo", "demo"])
    with pytest.raises(AlreadyExistsError):
        create_model(engine, "digits")
    with session_scope(engine, write=True) as s:
        update_model(s, "digits", ModelUpdate(description="8x8 digits", tags=["vision"]))
    with session_scope(engine) as s:
        pub = model_public(s, get_model(s, "digits"))
        assert pub.tags == ["vision"] and pub.description == "8x8 digits"
        assert pub.latest_version is None and pub.input_schema is None
        with pytest.raises(NotFoundError):
            get_model(s, "nope")


def test_full_upload_becomes_ready_with_lineage(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles
) -> None:
    create_model(engine, "digits")
    v1 = publish_plan(
        engine,
        store,
        plan_files,
        metrics={"accuracy": 0.91, "f1": 0.9},
        hyperparameters={"lr": 0.1, "epochs": 10},
        lineage={"training_data_ref": "sklearn:digits@seed0"},
        description="initial",
    )
    assert v1.number == 1 and v1.status == VersionStatus.READY
    manifest = plan_files.manifest_obj
    assert v1.plan_sha256 == manifest.plan_sha256 == sha256_bytes(plan_files.plan)
    assert v1.weights_sha256 == sha256_bytes(plan_files.weights)
    assert blobs(store) == {v1.plan_sha256, v1.weights_sha256, v1.manifest_sha256}
    assert store.read_bytes(v1.manifest_sha256) == plan_files.manifest

    # a weights-only version: new global weights for the same plan, with federated lineage
    new_weights = plan_files.perturbed_weights(seed=1)
    v2 = publish(
        engine,
        store,
        "digits",
        weights=new_weights,
        meta={
            "metrics": {"accuracy": 0.93},
            "lineage": {
                "parent_version": 1,
                "federated_run": "run-7",
                "federated_round": 3,
                "num_clients": 12,
                "strategy": "FedAvg",
                "drift_summary": {"psi_max": 0.02},
            },
        },
    )
    assert v2.number == 2 and v2.plan_sha256 == v1.plan_sha256
    assert v2.manifest_sha256 == v1.manifest_sha256
    assert v2.weights_sha256 == sha256_bytes(new_weights)
    with session_scope(engine) as s:
        info = version_info(s, get_version(s, "digits", 2))
        assert info.lineage.parent_version == 1 and info.lineage.federated_round == 3
        assert info.lineage.num_clients == 12 and info.lineage.strategy == "FedAvg"
        assert info.lineage.drift_summary == {"psi_max": 0.02}
        assert info.metrics == {"accuracy": 0.93}
        assert info.plan.url == "/api/v1/models/digits/versions/2/plan"
        model = model_public(s, get_model(s, "digits"))
        assert model.latest_version == 2
        assert model.input_schema is not None and model.input_schema["shape"] == [None, 64]
        assert model.output_schema == {"name": "probabilities", "class_labels": list("0123456789")}
        page = list_versions(s, "digits", limit=1)
        assert page.total == 2 and [v.version for v in page.items] == [2]
        metrics = s.exec(select(VersionMetric.name, VersionMetric.value)).all()
        assert sorted(metrics) == [("accuracy", 0.91), ("accuracy", 0.93), ("f1", 0.9)]


def _corrupt(files: PlanFiles) -> tuple[bytes, bytes]:
    """A corrupt plan with a manifest that describes exactly those bytes."""
    half = len(files.plan) // 2
    plan = (
        files.plan[:half]
        + bytes(b ^ 0x55 for b in files.plan[half : half + 400])
        + files.plan[half + 400 :]
    )
    manifest = files.manifest_obj.model_copy(
        update={"plan_sha256": sha256_bytes(plan), "plan_size": len(plan)}
    )
    return plan, manifest.to_json().encode()


@pytest.mark.parametrize(
    "case",
    ["corrupt_plan", "manifest_of_other_plan", "bad_manifest_json", "wrong_weights", "not_weights"],
)
def test_bad_uploads_store_nothing(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, case: str
) -> None:
    create_model(engine, "digits")
    plan, manifest, weights = plan_files.plan, plan_files.manifest, plan_files.weights
    if case == "corrupt_plan":
        from edgefleet.plan import weights_to_bytes

        plan, manifest = _corrupt(plan_files)
        weights = weights_to_bytes(plan_files.weights_arrays())  # not bound to a plan
        match = "plan does not load"
    elif case == "manifest_of_other_plan":
        plan = plan + b"\x00"
        match = "plan does not match its manifest"
    elif case == "bad_manifest_json":
        manifest = b'{"format": "edgefleet-plan/1"}'
        match = "invalid plan manifest"
    elif case == "wrong_weights":
        from edgefleet.plan import weights_to_bytes

        arrays = plan_files.weights_arrays()
        first = next(iter(arrays))
        arrays[first] = arrays[first][:-1]
        weights = weights_to_bytes(arrays)
        match = "shape"
    else:
        weights = b"\x00" * 64
        match = "unreadable weights"
    with pytest.raises(ArtifactRejectedError, match=match):
        publish(engine, store, "digits", plan=plan, manifest=manifest, weights=weights)
    assert count_versions(engine) == 0
    assert blobs(store) == set()
    assert list(store.tmp.iterdir()) == []


def test_weights_only_needs_a_source_plan(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles
) -> None:
    create_model(engine, "digits")
    with pytest.raises(ArtifactRejectedError, match="no plan uploaded"):
        publish(engine, store, "digits", weights=plan_files.weights)
    with pytest.raises(InvalidQueryError, match="no version 4"):
        publish(engine, store, "digits", weights=plan_files.weights, meta={"plan_from_version": 4})
    publish_plan(engine, store, plan_files)
    with pytest.raises(InvalidQueryError, match="parent_version"):
        publish(
            engine,
            store,
            "digits",
            weights=plan_files.weights,
            meta={"plan_from_version": 1, "lineage": {"parent_version": 9}},
        )
    with pytest.raises(ArtifactRejectedError, match="needs its manifest"):
        publish(engine, store, "digits", plan=plan_files.plan, weights=plan_files.weights)
    with pytest.raises(NotFoundError):
        publish_plan(engine, store, plan_files, model="unknown")
    assert count_versions(engine) == 1


def test_incompatible_schema_is_refused(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles
) -> None:
    create_model(engine, "digits")
    publish_plan(engine, store, plan_files)
    m = plan_files.manifest_obj
    relabelled = m.model_copy(
        update={"output": m.output.model_copy(update={"class_labels": list("abcdefghij")})}
    )
    with pytest.raises(IncompatibleSchemaError, match="new model"):
        publish(
            engine,
            store,
            "digits",
            plan=plan_files.plan,
            manifest=relabelled.to_json().encode(),
            weights=plan_files.weights,
        )
    assert count_versions(engine) == 1


def test_status_life_cycle(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> None:
    from edgefleet.wire import AliasMove
    from registry.aliases import set_alias

    model_with_versions(engine, store, plan_files, seeds=(2,))
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
    with session_scope(engine, write=True) as s:
        with pytest.raises(ConflictError, match="move the alias first"):
            change_status(s, "digits", 1, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
        v2 = change_status(
            s, "digits", 2, VersionStatusUpdate(status=VersionStatus.ARCHIVED, reason="worse")
        )
        assert v2.status == VersionStatus.ARCHIVED and v2.status_reason == "worse"
        with pytest.raises(InvalidTransitionError):
            change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.PENDING))
        assert (
            change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.READY)).status
            == VersionStatus.READY
        )
    # an archived version's plan can still seed a weights-only version
    with session_scope(engine, write=True) as s:
        change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
    v3 = publish(engine, store, "digits", weights=plan_files.weights, meta={"plan_from_version": 2})
    assert v3.number == 3


def test_manifest_round_trips(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> None:
    create_model(engine, "digits")
    v = publish_plan(engine, store, plan_files)
    assert PlanManifest.model_validate(v.manifest) == plan_files.manifest_obj
