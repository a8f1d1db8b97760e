"""A version carries its own drift reference: the plan's bins, its training clients' data."""

from __future__ import annotations

import numpy as np
from sqlalchemy import Engine

from edgefleet.datasets import Dataset
from edgefleet.drift import DriftAccumulator
from edgefleet.drift.reference import ReferenceProfile
from registry.db import session_scope
from registry.store import ArtifactStore
from registry.versions import get_version, reference_of
from tests.registry.support import PlanFiles, create_model, publish, publish_plan


def test_a_federated_version_gets_its_training_summary_as_reference(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, digits_data: Dataset
) -> None:
    create_model(engine, "digits")
    publish_plan(engine, store, plan_files)
    plan = plan_files.manifest_obj.reference
    assert plan is not None
    with session_scope(engine) as s:
        own = reference_of(get_version(s, "digits", 1))
    assert own is not None and own.model_dump() == plan.model_dump()  # no summary: the plan's

    # the training clients saw brighter inputs than the plan was built on
    x = np.clip(digits_data.x_test + 4.0, 0.0, 16.0)
    y = digits_data.y_test
    acc = DriftAccumulator(plan, model="digits", version=1)
    acc.update(x, np.eye(10)[y], y)
    summary = acc.to_summary()
    lineage = {"parent_version": 1, "federated_run": "run-1", "federated_round": 3,
               "num_clients": 4, "drift_summary": summary.model_dump(mode="json")}
    publish(engine, store, "digits", weights=plan_files.perturbed_weights(1),
            meta={"lineage": lineage})
    # lineage JSON that is not a summary of this plan's bins leaves the plan's reference
    publish(engine, store, "digits", weights=plan_files.perturbed_weights(2),
            meta={"lineage": {"parent_version": 1, "drift_summary": {"psi_max": 0.02}}})

    with session_scope(engine) as s:
        refreshed = reference_of(get_version(s, "digits", 2))
        assert reference_of(get_version(s, "digits", 2)) is refreshed  # cached per version
        other = reference_of(get_version(s, "digits", 3))
    assert isinstance(refreshed, ReferenceProfile)
    assert refreshed.fingerprint == plan.fingerprint  # devices' summaries still fit its bins
    assert refreshed.n_samples == len(x)
    np.testing.assert_allclose([f.mean for f in refreshed.features], x.mean(axis=0), atol=1e-6)
    assert [f.mean for f in refreshed.features] != [f.mean for f in plan.features]
    assert refreshed.class_counts == np.bincount(y, minlength=10).tolist()
    assert other is not None and other.model_dump() == plan.model_dump()
