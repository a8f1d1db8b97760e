"""Prediction store: chunked runs that resume, one prediction per key and version, lookups."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from edgefleet.wire import AliasMove
from registry.aliases import set_alias
from registry.db import session_scope
from registry.errors import (
    ConflictError,
    InvalidQueryError,
    NotFoundError,
    VersionNotReadyError,
)
from registry.models import PrecomputeRun, PrecomputeStatus, VersionStatus, VersionStatusUpdate
from registry.predictions import (
    commit_chunk,
    finish_run,
    get_prediction,
    resolve_version,
    start_run,
)
from registry.store import ArtifactStore
from registry.versions import change_status
from tests.registry.support import PlanFiles, model_with_versions

P0 = [1.0] + [0.0] * 9
P3 = [0.0] * 3 + [1.0] + [0.0] * 6


@pytest.fixture
def two_versions(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    model_with_versions(engine, store, plan_files, seeds=(1,))
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="t")
    return engine


def new_run(engine: Engine, version: int = 1, rows: int = 4, sha: str = "a" * 64) -> PrecomputeRun:
    with session_scope(engine, write=True) as s:
        resolved = resolve_version(s, "digits", version=version)
        return start_run(s, resolved, input_name="in.csv", input_sha256=sha, key_column="id",
                         rows_total=rows)


def chunk(engine: Engine, run: PrecomputeRun, keys: list[str], probs: list[float]) -> int:
    with session_scope(engine, write=True) as s:
        return commit_chunk(s, run, keys, ["0"] * len(keys), [probs] * len(keys))


def test_chunks_commit_with_the_run_and_a_restart_resumes(two_versions: Engine) -> None:
    engine = two_versions
    run = new_run(engine)
    assert chunk(engine, run, ["a", "b"], P0) == 2
    resumed = new_run(engine)  # same version, same input: the same run, at row 2
    assert (resumed.id, resumed.rows_done, resumed.status) == (run.id, 2, PrecomputeStatus.RUNNING)
    with pytest.raises(ConflictError, match="2 of 4"), session_scope(engine, write=True) as s:
        finish_run(s, resumed)
    assert chunk(engine, resumed, ["c", "d"], P3) == 4
    with session_scope(engine, write=True) as s:
        assert finish_run(s, resumed).status == PrecomputeStatus.DONE
    with session_scope(engine) as s:
        got = get_prediction(s, "digits", "c")
    assert (got.version, got.alias, got.probabilities) == (1, "production", P3)
    assert got.class_labels == [str(i) for i in range(10)]


def test_two_jobs_on_one_run_cannot_both_commit_the_same_rows(two_versions: Engine) -> None:
    engine = two_versions
    first, second = new_run(engine), new_run(engine)
    chunk(engine, first, ["a", "b"], P0)
    with pytest.raises(ConflictError, match="advanced by another job"):
        chunk(engine, second, ["a", "b"], P3)
    with session_scope(engine) as s:
        assert get_prediction(s, "digits", "a").probabilities == P0  # the loser wrote nothing


def test_a_key_has_one_prediction_per_version_and_a_new_run_replaces_it(
    two_versions: Engine,
) -> None:
    engine = two_versions
    chunk(engine, new_run(engine, sha="a" * 64), ["a"], P0)
    chunk(engine, new_run(engine, sha="b" * 64), ["a"], P3)  # new data for the same key
    chunk(engine, new_run(engine, version=2), ["a"], P0)
    with session_scope(engine) as s:
        assert get_prediction(s, "digits", "a").probabilities == P3
        assert get_prediction(s, "digits", "a", version=2).probabilities == P0
        set_alias(s, "digits", "canary", AliasMove(version=2), actor="t")
        s.commit()
        assert get_prediction(s, "digits", "a", alias="canary").version == 2


def test_bad_chunks_and_lookups_are_refused(two_versions: Engine) -> None:
    engine = two_versions
    run = new_run(engine)
    with pytest.raises(InvalidQueryError, match="appears twice"):
        chunk(engine, run, ["a", "a"], P0)
    with pytest.raises(InvalidQueryError, match="longer than 256"):
        chunk(engine, run, ["k" * 257], P0)
    with pytest.raises(ConflictError, match="counted 4 rows"):
        new_run(engine, rows=5)
    with session_scope(engine) as s:
        with pytest.raises(NotFoundError, match=r"key 'zzz' by version 1 \(production\)"):
            get_prediction(s, "digits", "zzz")
        with pytest.raises(NotFoundError, match="no alias 'canary'"):
            get_prediction(s, "digits", "a", alias="canary")
        with pytest.raises(InvalidQueryError, match="not both"):
            resolve_version(s, "digits", version=1, alias="production")
    with session_scope(engine, write=True) as s:
        change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
    with session_scope(engine) as s, pytest.raises(VersionNotReadyError):
        resolve_version(s, "digits", version=2)
