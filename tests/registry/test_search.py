"""Search: by task, tag, name, alias and metric thresholds, paginated."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from edgefleet.wire import AliasMove
from registry.aliases import set_alias
from registry.db import session_scope
from registry.errors import InvalidQueryError
from registry.models import VersionStatus
from registry.search import MetricFilter, parse_metric_filter, search_models, search_versions
from registry.store import ArtifactStore
from tests.registry.support import PlanFiles, create_model, publish_plan, publish_retrained


@pytest.fixture
def catalog(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    create_model(engine, "digits-mlp", tags=["vision", "demo"])
    create_model(engine, "digits_small", tags=["vision"])
    create_model(engine, "wine", task="regression", tags=["tabular"])
    publish_plan(engine, store, plan_files, "digits-mlp", metrics={"accuracy": 0.85, "f1": 0.8})
    for seed, acc in ((1, 0.92), (2, 0.95)):
        publish_retrained(
            engine,
            store,
            plan_files,
            seed,
            "digits-mlp",
            metrics={"accuracy": acc},
            lineage={"federated_run": "run-1", "parent_version": 1},
        )
    publish_plan(engine, store, plan_files, "digits_small", metrics={"accuracy": 0.91})
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits-mlp", "production", AliasMove(version=2), actor="t")
        set_alias(s, "digits_small", "canary", AliasMove(version=1), actor="t")
    return engine


def names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.name for m in page.items]


def pairs(page) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return [(v.model, v.version) for v in page.items]


def test_search_models(catalog: Engine) -> None:
    with session_scope(catalog) as s:
        assert names(search_models(s)) == ["digits-mlp", "digits_small", "wine"]
        assert names(search_models(s, task="regression")) == ["wine"]
        assert names(search_models(s, tag="vision")) == ["digits-mlp", "digits_small"]
        assert names(search_models(s, name="DIGITS")) == ["digits-mlp", "digits_small"]
        assert names(search_models(s, name="_")) == [
            "digits_small"
        ]  # '_' is literal, not a wildcard
        assert names(search_models(s, alias="production")) == ["digits-mlp"]
        assert names(search_models(s, tag="vision", alias="canary")) == ["digits_small"]
        page = search_models(s, limit=2, offset=2)
        assert page.total == 3 and names(page) == ["wine"]
        top = search_models(s, name="digits-mlp").items[0]
        assert top.aliases == {"production": 2} and top.latest_version == 3


def test_search_versions_by_metric_thresholds(catalog: Engine) -> None:
    with session_scope(catalog) as s:
        good = search_versions(s, metrics=["accuracy>=0.9"])
        assert sorted(pairs(good)) == [("digits-mlp", 2), ("digits-mlp", 3), ("digits_small", 1)]
        assert pairs(search_versions(s, metrics=["accuracy>0.9", "accuracy<0.95"], tag="demo")) == [
            ("digits-mlp", 2)
        ]
        assert pairs(search_versions(s, metrics=["f1>=0.5"])) == [("digits-mlp", 1)]
        assert pairs(search_versions(s, alias="production")) == [("digits-mlp", 2)]
        assert pairs(search_versions(s, federated_run="run-1", sort="accuracy")) == [
            ("digits-mlp", 3),
            ("digits-mlp", 2),
        ]
        best = search_versions(s, model="digits-mlp", sort="accuracy", limit=1)
        assert best.total == 3 and pairs(best) == [("digits-mlp", 3)]
        assert search_versions(s, status=VersionStatus.ARCHIVED).total == 0
        assert search_versions(s, task="regression").total == 0


def test_sorting_by_a_metric_keeps_versions_without_it_last(catalog: Engine) -> None:
    with session_scope(catalog) as s:
        page = search_versions(s, model="digits-mlp", sort="f1")
        assert page.total == 3
        assert pairs(page) == [("digits-mlp", 1), ("digits-mlp", 3), ("digits-mlp", 2)]
        tail = search_versions(s, model="digits-mlp", sort="f1", limit=2, offset=1)
        assert tail.total == 3 and pairs(tail) == [("digits-mlp", 3), ("digits-mlp", 2)]
        nobody = search_versions(s, sort="no_such_metric")
        assert nobody.total == 4 and len(nobody.items) == 4


@pytest.mark.parametrize("text", ["accuracy", "accuracy>=x", ">=0.9", "acc uracy>=1", "a>=nan"])
def test_malformed_metric_filters(text: str) -> None:
    with pytest.raises(InvalidQueryError):
        parse_metric_filter(text)


def test_metric_filter_parsing() -> None:
    assert parse_metric_filter(" accuracy >= 0.9 ") == MetricFilter("accuracy", ">=", 0.9)
    assert parse_metric_filter("loss<1e-1") == MetricFilter("loss", "<", 0.1)


def test_page_bounds(catalog: Engine) -> None:
    with session_scope(catalog) as s:
        for kw in ({"limit": 0}, {"limit": 10_000}, {"offset": -1}):
            with pytest.raises(InvalidQueryError):
                search_models(s, **kw)  # type: ignore[arg-type]
        with pytest.raises(InvalidQueryError):
            search_versions(s, sort="bad name")
