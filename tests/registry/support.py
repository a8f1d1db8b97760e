"""Fixtures and helpers shared by the registry and server tests (imported by both conftests).

Databases: ``db_url`` is parametrised over SQLite (a file in the session's temporary directory)
and PostgreSQL (a uniquely named database created for this test session on the server at
``EDGEFLEET_TEST_POSTGRES_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``,
and dropped at the end). When PostgreSQL is unreachable its tests *fail* with a message saying
so, unless ``EDGEFLEET_TEST_SKIP_POSTGRES=1``. Each test gets empty tables (``engine``).
"""

from __future__ import annotations

import io
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from edgefleet.plan import PlanManifest, weights_from_bytes, weights_to_bytes
from edgefleet.wire import VersionPublish
from registry import migrate
from registry.db import make_engine, session_scope
from registry.models import ModelCreate, ModelVersion, metadata
from registry.publish import UploadedArtifacts, publish_version
from registry.store import ArtifactStore

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")


def postgres_server_url() -> str:
    return os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", DEFAULT_PG)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresDatabases:
    """Creates uniquely named scratch databases on the test PostgreSQL server and drops them."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(_psycopg_dsn(self.server_url), autocommit=True, connect_timeout=5)

    def check(self) -> None:
        import psycopg

        try:
            with self._admin() as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            pytest.fail(
                f"PostgreSQL is unreachable at {self.server_url} ({exc}). Start it, point "
                "EDGEFLEET_TEST_POSTGRES_URL at one, or set EDGEFLEET_TEST_SKIP_POSTGRES=1 to "
                "skip the PostgreSQL half of the registry tests.",
                pytrace=False,
            )

    def create(self, tag: str = "") -> str:
        name = f"edgefleet_test_{os.getpid()}_{tag}{uuid.uuid4().hex[:8]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(make_url(self.server_url).set(database=name).render_as_string(False))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The PostgreSQL scratch-database factory (skipped or failed as the module notes say)."""
    if os.environ.get("EDGEFLEET_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("EDGEFLEET_TEST_SKIP_POSTGRES=1")
    dbs = PostgresDatabases(postgres_server_url())
    dbs.check()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database URL per backend, migrated to head once per session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres").create()
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def _session_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def empty_tables(engine: Engine) -> None:
    """Delete every row of every registry table (ids restart on PostgreSQL)."""
    tables = [t.name for t in metadata.sorted_tables]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(sa.text(f"DELETE FROM {name}"))


@pytest.fixture
def engine(_session_engine: Engine) -> Engine:
    """The session's engine for this backend, with empty tables."""
    empty_tables(_session_engine)
    return _session_engine


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


# --- plan artifacts ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanFiles:
    """The three files of a plan directory, as bytes."""

    plan: bytes
    manifest: bytes
    weights: bytes

    @property
    def manifest_obj(self) -> PlanManifest:
        return PlanManifest.from_json(self.manifest)

    def weights_arrays(self) -> dict[str, np.ndarray]:
        return weights_from_bytes(self.weights, manifest=self.manifest_obj)

    def perturbed_weights(self, seed: int, scale: float = 0.01) -> bytes:
        """Valid weights for the same plan, slightly different (a "new round")."""
        rng = np.random.default_rng(seed)
        arrays = {
            k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in self.weights_arrays().items()
        }
        return weights_to_bytes(arrays, plan_sha256=self.manifest_obj.plan_sha256)


@pytest.fixture(scope="session")
def plan_files(digits_plan_dir: Path) -> PlanFiles:
    return PlanFiles(
        plan=(digits_plan_dir / "plan.tflite").read_bytes(),
        manifest=(digits_plan_dir / "manifest.json").read_bytes(),
        weights=(digits_plan_dir / "weights.safetensors").read_bytes(),
    )


def stage_bytes(store: ArtifactStore, data: bytes):  # type: ignore[no-untyped-def]
    return store.stage(io.BytesIO(data))


def publish(
    engine: Engine,
    store: ArtifactStore,
    model: str,
    *,
    plan: bytes | None = None,
    manifest: bytes | None = None,
    weights: bytes,
    meta: VersionPublish | dict | None = None,
    actor: str = "tester",
) -> ModelVersion:
    """Publish a version through the registry (staging the bytes like an upload would)."""
    if isinstance(meta, dict):
        meta = VersionPublish.model_validate(meta)
    artifacts = UploadedArtifacts(
        weights=stage_bytes(store, weights),
        plan=stage_bytes(store, plan) if plan is not None else None,
        manifest=stage_bytes(store, manifest) if manifest is not None else None,
    )
    try:
        with session_scope(engine, write=True) as session:
            return publish_version(
                session, store, model, meta or VersionPublish(), artifacts, actor=actor
            )
    finally:
        for blob in (artifacts.weights, artifacts.plan, artifacts.manifest):
            if blob is not None:
                store.discard(blob)


def create_model(engine: Engine, name: str = "digits", **kw: object) -> None:
    from registry.catalog import create_model as _create

    with session_scope(engine, write=True) as session:
        _create(session, ModelCreate(name=name, **kw))  # type: ignore[arg-type]


def publish_plan(
    engine: Engine, store: ArtifactStore, files: PlanFiles, model: str = "digits", **meta: object
) -> ModelVersion:
    """Publish the full plan (plan + manifest + weights) as a new version of ``model``."""
    return publish(
        engine,
        store,
        model,
        plan=files.plan,
        manifest=files.manifest,
        weights=files.weights,
        meta=dict(meta) if meta else None,
    )


def publish_retrained(
    engine: Engine,
    store: ArtifactStore,
    files: PlanFiles,
    seed: int,
    model: str = "digits",
    **meta: object,
) -> ModelVersion:
    """Publish perturbed weights (a "new round") on the plan of version 1 of ``model``."""
    return publish(
        engine,
        store,
        model,
        weights=files.perturbed_weights(seed),
        meta={"plan_from_version": 1, **meta},
    )


def model_with_versions(
    engine: Engine,
    store: ArtifactStore,
    files: PlanFiles,
    seeds: tuple[int, ...] = (1,),
    model: str = "digits",
) -> Engine:
    """Register ``model``: its full plan as version 1, then one retrained version per seed."""
    create_model(engine, model)
    publish_plan(engine, store, files, model)
    for seed in seeds:
        publish_retrained(engine, store, files, seed, model)
    return engine


def run_in_threads(fn: Callable[[], object], n: int) -> list[BaseException]:
    """Call ``fn`` from ``n`` threads at once; the exceptions they raised (none: ``[]``)."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def dumps(obj: object) -> str:
    return json.dumps(obj)
