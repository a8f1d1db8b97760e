"""Each state-changing registry action writes exactly one audit record with the right actor, and
a failed action (or one that changes nothing) writes none (SQLite and PostgreSQL): publishing,
version status changes and the integrity checks' DAMAGED marks, aliases, models, devices, keys."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.wire import AliasMove, EnrollRequest
from registry.aliases import delete_alias, rollback_alias, set_alias
from registry.audit import AuditQuery, list_records, verify
from registry.catalog import create_model, update_model
from registry.db import session_scope
from registry.devices import enroll, revoke_device, update_device
from registry.errors import (
    AlreadyExistsError,
    ArtifactRejectedError,
    ConflictError,
    NotFoundError,
)
from registry.integrity import report_damage, scrub
from registry.models import (
    AuditRecord,
    DeviceUpdate,
    ModelCreate,
    ModelUpdate,
    ModelVersion,
    VersionStatus,
    VersionStatusUpdate,
)
from registry.signing import open_signer, rotate
from registry.store import ArtifactStore
from registry.versions import change_status
from tests.registry.support import PlanFiles, model_with_versions, publish


def new_records(engine: Engine, action: Callable[[], object]) -> list[AuditRecord]:
    """Run ``action`` and return the audit records it added."""
    with session_scope(engine) as s:
        before = list_records(s, AuditQuery(newest_first=True, limit=1))
    last = before[0].seq if before else 0
    action()
    with session_scope(engine) as s:
        return list_records(s, AuditQuery(after_seq=last, limit=1000))


def fails(engine: Engine, error: type[Exception], action: Callable[[], object]) -> None:
    """``action`` raises ``error`` and leaves no audit record."""
    def run() -> None:
        with pytest.raises(error):
            action()

    assert new_records(engine, run) == []


def one(records: list[AuditRecord], action: str, actor: str, target: str) -> AuditRecord:
    assert [(r.action, r.actor, r.target) for r in records] == [(action, actor, target)]
    return records[0]


@pytest.fixture
def two_versions(engine: Engine, store: ArtifactStore, plan_files: PlanFiles) -> Engine:
    return model_with_versions(engine, store, plan_files, seeds=(2,))


def test_publish_writes_one_record_and_a_rejected_upload_none(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles
) -> None:
    model_with_versions(engine, store, plan_files, seeds=())
    weights = plan_files.perturbed_weights(5)
    got = new_records(engine, lambda: publish(
        engine, store, "digits", weights=weights, actor="admin:ci",
        meta={"plan_from_version": 1, "description": "round 5"}))
    rec = one(got, "version.publish", "admin:ci", "digits/2")
    assert rec.after is not None and rec.after["status"] == "READY" and rec.reason == "round 5"
    fails(engine, ArtifactRejectedError, lambda: publish(
        engine, store, "digits", weights=b"not safetensors", actor="admin:ci",
        meta={"plan_from_version": 1}))


def test_archive_and_restore_write_one_record_each(two_versions: Engine) -> None:
    engine = two_versions

    def status(number: int, to: VersionStatus, reason: str = "") -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return change_status(s, "digits", number,
                                     VersionStatusUpdate(status=to, reason=reason),
                                     actor="admin:alice")
        return run

    rec = one(new_records(engine, status(2, VersionStatus.ARCHIVED, "superseded")),
              "version.archive", "admin:alice", "digits/2")
    assert (rec.before, rec.after, rec.reason) == (
        {"status": "READY"}, {"status": "ARCHIVED"}, "superseded")
    assert new_records(engine, status(2, VersionStatus.ARCHIVED)) == []  # no change, no record
    one(new_records(engine, status(2, VersionStatus.READY)),
        "version.restore", "admin:alice", "digits/2")
    with session_scope(engine, write=True) as s:
        set_alias(s, "digits", "production", AliasMove(version=1), actor="admin:alice")
    fails(engine, ConflictError, status(1, VersionStatus.ARCHIVED))  # still production


def test_alias_moves_rollbacks_and_removals(two_versions: Engine) -> None:
    engine = two_versions

    def move(version: int, **kw: object) -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return set_alias(s, "digits", "canary", AliasMove(version=version, **kw),  # type: ignore[arg-type]
                                 actor="admin:bob")
        return run

    rec = one(new_records(engine, move(1, reason="first")), "alias.move", "admin:bob",
              "digits/canary")
    assert rec.before is None and rec.after == {"version": 1, "rollout_percent": 10.0}
    rec = one(new_records(engine, move(2, rollout_percent=25)), "alias.move", "admin:bob",
              "digits/canary")
    assert rec.before == {"version": 1, "rollout_percent": 10.0}
    assert rec.after == {"version": 2, "rollout_percent": 25.0}
    assert new_records(engine, move(2)) == []  # where it already is: nothing recorded
    fails(engine, NotFoundError, move(9))

    def rollback() -> object:
        with session_scope(engine, write=True) as s:
            return rollback_alias(s, "digits", "canary", actor="admin:carol")

    rec = one(new_records(engine, rollback), "alias.move", "admin:carol", "digits/canary")
    assert rec.after == {"version": 1, "rollout_percent": 25.0} and rec.reason == "rollback"

    def remove(alias: str) -> Callable[[], object]:
        def run() -> None:
            with session_scope(engine, write=True) as s:
                delete_alias(s, "digits", alias, actor="admin:carol", reason="done")
        return run

    rec = one(new_records(engine, remove("canary")), "alias.delete", "admin:carol",
              "digits/canary")
    assert rec.before == {"version": 1, "rollout_percent": 25.0}
    fails(engine, NotFoundError, remove("canary"))


def test_device_enrolment_and_revocation(engine: Engine) -> None:
    def enrol(replace: bool = False, actor: str = "enrolment:fleet") -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return enroll(s, EnrollRequest(enrollment_token="secret-token", device_id="pi-1",
                                               labels={"site": "a"}),
                              replace=replace, actor=actor)
        return run

    rec = one(new_records(engine, enrol()), "device.enrol", "enrolment:fleet", "device/pi-1")
    assert rec.before is None and rec.after is not None and rec.after["labels"] == {"site": "a"}
    fails(engine, AlreadyExistsError, enrol())
    rec = one(new_records(engine, enrol(replace=True, actor="admin:ops")), "device.enrol",
              "admin:ops", "device/pi-1")
    assert rec.before is not None

    def revoke(device_id: str) -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return revoke_device(s, device_id, actor="admin:ops")
        return run

    rec = one(new_records(engine, revoke("pi-1")), "device.revoke", "admin:ops", "device/pi-1")
    assert rec.after is not None and rec.after["revoked"] is True
    fails(engine, NotFoundError, revoke("pi-404"))
    with session_scope(engine) as s:
        text = str([r.model_dump() for r in list_records(s)])
    assert "secret-token" not in text and "efd_" not in text and "token_hash" not in text


def test_key_creation_and_rotation(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"

    def open_key() -> object:
        with session_scope(engine, write=True) as s:
            return open_signer(s, path, actor="system:server")

    got = new_records(engine, open_key)
    rec = one(got, "key.create", "system:server", got[0].target)
    assert rec.after is not None and rec.target == f"key/{rec.after['key_id']}"
    assert new_records(engine, open_key) == []  # a known key: nothing recorded
    with session_scope(engine, write=True) as s:
        old = open_signer(s, path)

    def rotation() -> object:
        with session_scope(engine, write=True) as s:
            return rotate(s, old, actor="cli:root")

    rec = one(new_records(engine, rotation), "key.rotate", "cli:root", f"key/{old.key_id}")
    assert rec.after is not None and rec.after["endorsed_by"] == old.key_id
    with session_scope(engine) as s:
        assert verify(s).ok


def test_the_cli_rotation_is_recorded_as_the_operating_system_user(
    tmp_path: Path, digits_plan_dir: Path
) -> None:
    import getpass
    import os

    from typer.testing import CliRunner

    from edgefleet_cli.main import app
    from registry.db import make_engine
    from server.bootstrap import publish_plan_dir
    from server.settings import ServerSettings

    url = f"sqlite:///{tmp_path / 'r.db'}"
    key = tmp_path / "keys" / "k.pem"
    settings = ServerSettings(database_url=url, artifact_dir=tmp_path / "store",
                              signing_key_path=key)
    assert publish_plan_dir(settings, digits_plan_dir, "digits", actor="cli:ops") == 1
    env = {**os.environ, "EDGEFLEET_SERVER_DATABASE_URL": url,
           "EDGEFLEET_SERVER_ARTIFACT_DIR": str(tmp_path / "store"),
           "EDGEFLEET_SERVER_SIGNING_KEY_PATH": str(key)}
    out = CliRunner().invoke(app, ["server", "keys", "rotate"], env=env)
    assert out.exit_code == 0, out.output
    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            trail = [(r.action, r.actor) for r in list_records(s)]
            assert verify(s).ok
    finally:
        engine.dispose()
    assert trail == [("key.create", "system:registry"), ("model.create", "cli:ops"),
                     ("version.publish", "cli:ops"), ("key.rotate", f"cli:{getpass.getuser()}")]


def test_model_creation_and_update(engine: Engine) -> None:
    def create(name: str = "wine") -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return create_model(s, ModelCreate(name=name, task="regression",
                                                   description="acidity", tags=["b", "a"]),
                                    actor="admin:alice")
        return run

    def update(patch: ModelUpdate, name: str = "wine") -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return update_model(s, name, patch, actor="admin:bob")
        return run

    rec = one(new_records(engine, create()), "model.create", "admin:alice", "wine")
    assert rec.before is None
    assert rec.after == {"task": "regression", "description": "acidity", "tags": ["a", "b"]}
    fails(engine, AlreadyExistsError, create())
    rec = one(new_records(engine, update(ModelUpdate(description="pH", tags=["c"]))),
              "model.update", "admin:bob", "wine")
    assert rec.before == {"task": "regression", "description": "acidity", "tags": ["a", "b"]}
    assert rec.after == {"task": "regression", "description": "pH", "tags": ["c"]}
    assert new_records(engine, update(ModelUpdate(tags=["c"]))) == []  # no change, no record
    fails(engine, NotFoundError, update(ModelUpdate(description="x"), name="beer"))


def test_device_labels_and_model(engine: Engine) -> None:
    with session_scope(engine, write=True) as s:
        create_model(s, ModelCreate(name="digits"))
        enroll(s, EnrollRequest(enrollment_token="secret-token", device_id="pi-1",
                                labels={"site": "a"}))

    def patch(body: DeviceUpdate, device_id: str = "pi-1") -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return update_device(s, device_id, body, actor="admin:ops")
        return run

    rec = one(new_records(engine, patch(DeviceUpdate(labels={"site": "b", "rack": "2"}))),
              "device.update", "admin:ops", "device/pi-1")
    assert rec.before is not None and rec.before["labels"] == {"site": "a"}
    assert rec.after is not None and rec.after["labels"] == {"site": "b", "rack": "2"}
    assert rec.before["model_id"] is None and rec.after["model_id"] is None
    rec = one(new_records(engine, patch(DeviceUpdate(model="digits"))),
              "device.update", "admin:ops", "device/pi-1")
    assert rec.after is not None and rec.after["model_id"] is not None
    assert new_records(engine, patch(DeviceUpdate(labels={"rack": "2", "site": "b"}))) == []
    fails(engine, NotFoundError, patch(DeviceUpdate(labels={"site": "c"}), device_id="pi-404"))
    fails(engine, NotFoundError, patch(DeviceUpdate(model="missing")))
    with session_scope(engine) as s:
        assert "efd_" not in str([r.model_dump() for r in list_records(s)])


def test_damage_marks_and_their_repair(two_versions: Engine, store: ArtifactStore) -> None:
    engine = two_versions
    with session_scope(engine) as s:
        v1, v2 = (get_version_row(s, n) for n in (1, 2))
    path = store.path(v2.weights_sha256)
    original = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(original[:-100])

    def scrub_as(actor: str) -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine, write=True) as s:
                return scrub(s, store, actor=actor)
        return run

    rec = one(new_records(engine, scrub_as("system:scrubber")), "version.damage",
              "system:scrubber", "digits/2")
    assert (rec.before, rec.after) == ({"status": "READY"}, {"status": "DAMAGED"})
    assert rec.reason is not None and rec.reason.startswith("integrity: weights ")
    assert new_records(engine, scrub_as("system:scrubber")) == []  # still damaged: no record
    path.write_bytes(original)  # the operator restores the blob
    rec = one(new_records(engine, scrub_as("cli:ops")), "version.status", "cli:ops", "digits/2")
    assert (rec.before, rec.after, rec.reason) == (
        {"status": "DAMAGED"}, {"status": "READY"}, "integrity restored")
    # a download's re-hash reports damage from a read path, in a transaction of its own
    got = new_records(engine, lambda: report_damage(engine, "digits", v1.number,
                                                    "plan 0123456789ab…: size 3 != 4",
                                                    actor="system:download"))
    rec = one(got, "version.damage", "system:download", "digits/1")
    assert rec.reason == "integrity: plan 0123456789ab…: size 3 != 4"
    assert new_records(engine, lambda: report_damage(engine, "digits", 1, "again")) == []
    with session_scope(engine) as s:
        assert verify(s).ok


def get_version_row(session: Session, number: int) -> ModelVersion:
    return session.exec(select(ModelVersion).where(col(ModelVersion.number) == number)).one()
