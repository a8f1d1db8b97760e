"""Aliases: READY-only, append-only history, "what was it at time T", rollback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from edgefleet.wire import AliasMove
from registry.aliases import (
    alias_at,
    alias_history,
    delete_alias,
    get_alias,
    list_aliases,
    rollback_alias,
    set_alias,
)
from registry.db import session_scope
from registry.errors import ConflictError, InvalidQueryError, NotFoundError, VersionNotReadyError
from registry.models import VersionStatus, VersionStatusUpdate
from registry.store import ArtifactStore
from registry.versions import change_status
from tests.registry.support import PlanFiles, model_with_versions


@pytest.fixture
def three_versions(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    return model_with_versions(engine, store, plan_files, seeds=(2, 3))


def move(engine: Engine, alias: str, version: int, **kw: object):  # type: ignore[no-untyped-def]
    with session_scope(engine, write=True) as s:
        return set_alias(s, "digits", alias, AliasMove(version=version, **kw), actor="alice")  # type: ignore[arg-type]


def test_moves_are_recorded_and_answer_any_past_moment(three_versions: Engine) -> None:
    engine = three_versions
    move(engine, "production", 1, reason="first release")
    move(engine, "production", 2, reason="round 3 is better")
    move(engine, "production", 2)  # no-op: nothing recorded
    move(engine, "production", 3, reason="round 4")
    with session_scope(engine) as s:
        history = alias_history(s, "digits", "production")
        assert history.total == 3
        events = list(reversed(history.items))
        assert [(e.from_version, e.to_version) for e in events] == [(None, 1), (1, 2), (2, 3)]
        assert [e.reason for e in events] == ["first release", "round 3 is better", "round 4"]
        assert {e.actor for e in events} == {"alice"}
        for event in events:
            assert alias_at(s, "digits", "production", event.at).to_version == event.to_version
        with pytest.raises(NotFoundError, match="did not exist"):
            alias_at(s, "digits", "production", events[0].at - timedelta(seconds=1))
        later = alias_at(s, "digits", "production", events[-1].at + timedelta(days=1))
        assert later.to_version == 3
        with pytest.raises(InvalidQueryError, match="time zone"):
            alias_at(s, "digits", "production", events[0].at.replace(tzinfo=None))


def test_rollback_returns_to_the_previous_version(three_versions: Engine) -> None:
    engine = three_versions
    move(engine, "production", 1)
    with session_scope(engine, write=True) as s, pytest.raises(ConflictError, match="no earlier"):
        rollback_alias(s, "digits", "production", actor="bob")
    move(engine, "production", 3)
    with session_scope(engine, write=True) as s:
        row = rollback_alias(s, "digits", "production", actor="bob", reason="accuracy dropped")
        assert row.updated_by == "bob"
    with session_scope(engine) as s:
        assert list_aliases(s, "digits")[0].version == 1
        last = alias_history(s, "digits", "production", limit=1).items[0]
        assert (last.from_version, last.to_version, last.reason) == (3, 1, "accuracy dropped")


def test_only_ready_versions_can_be_aliased(three_versions: Engine) -> None:
    engine = three_versions
    with session_scope(engine, write=True) as s:
        change_status(s, "digits", 2, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
    with pytest.raises(VersionNotReadyError, match="ARCHIVED"):
        move(engine, "production", 2)
    with pytest.raises(NotFoundError):
        move(engine, "production", 9)
    move(engine, "production", 1)
    move(engine, "production", 3)
    with session_scope(engine, write=True) as s:
        change_status(s, "digits", 1, VersionStatusUpdate(status=VersionStatus.ARCHIVED))
    with session_scope(engine, write=True) as s, pytest.raises(VersionNotReadyError):
        rollback_alias(s, "digits", "production", actor="bob")


def test_canary_percentages_and_names(three_versions: Engine) -> None:
    engine = three_versions
    with pytest.raises(InvalidQueryError, match="whole fleet"):
        move(engine, "production", 1, rollout_percent=50)
    with pytest.raises(InvalidQueryError, match="invalid alias"):
        move(engine, "Prod Uction", 1)
    assert move(engine, "canary", 2).rollout_percent == 10.0  # the default
    assert move(engine, "canary", 2, rollout_percent=25).rollout_percent == 25
    assert move(engine, "canary", 3).rollout_percent == 25  # kept across moves
    assert move(engine, "shadow", 3).rollout_percent is None
    with session_scope(engine, write=True) as s:
        delete_alias(s, "digits", "shadow", actor="alice", reason="done")
        with pytest.raises(NotFoundError):
            get_alias(s, "digits", "shadow")
    with session_scope(engine) as s:
        removal = alias_history(s, "digits", "shadow").items[0]
        assert (removal.from_version, removal.to_version) == (3, None)
        with pytest.raises(NotFoundError):
            alias_at(s, "digits", "shadow", removal.at)
        assert alias_history(s, "digits").total == 5
