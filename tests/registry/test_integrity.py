"""Artifacts verified at rest and signed versions, on SQLite and PostgreSQL: every kind of
alteration of a stored artifact (flipped bytes, flipped signs, truncation, a changed manifest
field or label) or of a recorded digest is found by the scrub and marks the version DAMAGED;
signatures survive key rotation."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import select

from edgefleet.plan import PlanManifest, weights_from_bytes, weights_to_bytes
from edgefleet.signature import verify_version
from edgefleet.wire import AliasMove, EnrollRequest
from registry.aliases import set_alias
from registry.assignment import assign
from registry.db import session_scope
from registry.devices import enroll
from registry.errors import ConflictError, DamagedArtifactError
from registry.integrity import damaged_versions, scrub
from registry.models import ModelVersion, SigningKey, VersionStatus
from registry.signing import (
    Signer,
    check_apart,
    commit_rotation,
    key_chain,
    open_signer,
    rotate,
    sign_unsigned,
    signature_of,
    statement_of,
)
from registry.store import ArtifactStore
from tests.registry.support import PlanFiles, create_model, publish


@pytest.fixture
def signer(engine: Engine, tmp_path: Path) -> Signer:
    with session_scope(engine, write=True) as session:
        return open_signer(session, tmp_path / "keys" / "signing.pem")


def publish_signed(engine: Engine, store: ArtifactStore, files: PlanFiles, signer: Signer
                   ) -> ModelVersion:
    create_model(engine, "digits")
    version = publish(engine, store, "digits", plan=files.plan, manifest=files.manifest,
                      weights=files.weights)
    with session_scope(engine, write=True) as session:
        assert sign_unsigned(session, signer) == 1
        row = session.get(ModelVersion, version.id)
        assert row is not None
        return row


def _rewrite(store: ArtifactStore, sha: str, change: Callable[[bytes], bytes]) -> None:
    path = store.path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(change(path.read_bytes()))


def _flip_bytes(data: bytes) -> bytes:
    b = bytearray(data)
    for i in (len(b) // 3, len(b) // 2, len(b) - 5):
        b[i] ^= 0xFF
    return bytes(b)


def _flip_signs(data: bytes) -> bytes:
    weights = weights_from_bytes(data)
    first = sorted(weights)[0]
    weights[first] = -weights[first]
    return weights_to_bytes(weights)


def _relabel(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["output"]["class_labels"][1] = "7"
    return json.dumps(manifest).encode()


def _change_field(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["train_batch_size"] = 8
    return json.dumps(manifest).encode()


ALTERATIONS = {
    "weights: 3 flipped bytes": ("weights_sha256", _flip_bytes),
    "weights: one kernel's signs": ("weights_sha256", _flip_signs),
    "weights: truncated": ("weights_sha256", lambda d: d[:-100]),
    "plan: flipped bytes": ("plan_sha256", _flip_bytes),
    "plan: truncated": ("plan_sha256", lambda d: d[: len(d) // 2]),
    "manifest: a label 1 -> 7": ("manifest_sha256", _relabel),
    "manifest: a changed field": ("manifest_sha256", _change_field),
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_scrub_finds_every_alteration_and_the_version_is_never_assigned(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, signer: Signer,
    alteration: str,
) -> None:
    version = publish_signed(engine, store, plan_files, signer)
    column, change = ALTERATIONS[alteration]
    sha = getattr(version, column)
    with session_scope(engine, write=True) as session:
        assert scrub(session, store).ok  # intact so far
    original = store.path(sha).read_bytes()
    _rewrite(store, sha, change)
    assert store.problem(sha, None) is not None
    with session_scope(engine, write=True) as session:
        report = scrub(session, store)
        assert not report.ok and [(m, n) for m, n, _ in report.damaged] == [("digits", 1)]
        assert damaged_versions(session)[0][:2] == ("digits", 1)
        row = session.get(ModelVersion, version.id)
        assert row is not None and row.status == VersionStatus.DAMAGED
        assert row.status_reason.startswith("integrity:") and row.damaged_at is not None
    with session_scope(engine, write=True) as session, pytest.raises(ConflictError):
        set_alias(session, "digits", "production", AliasMove(version=1), actor="t")
    _rewrite(store, sha, lambda _: original)  # the operator restores the blob
    with session_scope(engine, write=True) as session:
        report = scrub(session, store)
        assert report.ok and report.restored == [("digits", 1)]
        assert session.get(ModelVersion, version.id).status == VersionStatus.READY  # type: ignore[union-attr]


def test_a_damaged_production_version_is_not_handed_out(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, signer: Signer,
) -> None:
    version = publish_signed(engine, store, plan_files, signer)
    with session_scope(engine, write=True) as session:
        set_alias(session, "digits", "production", AliasMove(version=1), actor="t")
        device, _ = enroll(session, EnrollRequest(enrollment_token="x", device_id="d1",
                                                  model="digits"))
    _rewrite(store, version.weights_sha256, _flip_bytes)
    with session_scope(engine, write=True) as session:
        scrub(session, store)
    with session_scope(engine) as session, pytest.raises(DamagedArtifactError, match="DAMAGED"):
        assign(session, session.merge(device))


def test_an_altered_digest_in_the_database_fails_the_signature(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, signer: Signer,
) -> None:
    version = publish_signed(engine, store, plan_files, signer)
    other = plan_files.perturbed_weights(7)
    forged = store.put_bytes(other)  # a consistent blob for a forged digest
    with session_scope(engine, write=True) as session:
        row = session.get(ModelVersion, version.id)
        assert row is not None
        row.weights_sha256, row.weights_size = forged, len(other)
        session.add(row)
    with session_scope(engine, write=True) as session:
        report = scrub(session, store)
        [(_, _, reason)] = report.damaged
        assert "signature" in reason


def test_signatures_verify_with_the_chain_after_rotation(
    engine: Engine, store: ArtifactStore, plan_files: PlanFiles, signer: Signer,
) -> None:
    version = publish_signed(engine, store, plan_files, signer)
    pinned = [key_chain_of(engine, signer.key_id)[-1]]  # what a device pinned at enrolment
    with session_scope(engine, write=True) as session:
        new = rotate(session, signer)
    commit_rotation(new)
    assert new.key_id != signer.key_id and Signer.load(signer.path).key_id == new.key_id
    v2 = publish(engine, store, "digits", weights=plan_files.perturbed_weights(3),
                 meta={"plan_from_version": 1})
    with session_scope(engine, write=True) as session:
        assert sign_unsigned(session, new) == 1
        old_row, new_row = session.get(ModelVersion, version.id), session.get(ModelVersion, v2.id)
        assert old_row is not None and new_row is not None
        for row in (old_row, new_row):  # the old signature still verifies, the new one too
            sig = signature_of(session, row)
            assert sig is not None
            verify_version(statement_of(row, "digits"), signer_id=sig.key_id,
                           signature=sig.signature, pinned=pinned, chain=sig.key_chain)
        assert [k.key_id for k in signature_of(session, new_row).key_chain] == [  # type: ignore[union-attr]
            signer.key_id, new.key_id]
        keys = {k.key_id: k for k in session.exec(select(SigningKey))}
        assert keys[signer.key_id].retired_at is not None and keys[new.key_id].retired_at is None
    with session_scope(engine, write=True) as session:
        assert scrub(session, store).ok


def key_chain_of(engine: Engine, key_id: str):  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return key_chain(session, key_id)


def test_an_interrupted_rotation_is_finished_or_discarded(
    engine: Engine, tmp_path: Path, signer: Signer
) -> None:
    with session_scope(engine, write=True) as session:
        new = rotate(session, signer)  # committed, but the key file was not replaced
    with session_scope(engine, write=True) as session:
        assert open_signer(session, signer.path).key_id == new.key_id
    try:
        with session_scope(engine, write=True) as session:
            rotate(session, new)
            raise RuntimeError("the rotation's commit fails")
    except RuntimeError:
        pass
    with session_scope(engine, write=True) as session:
        assert open_signer(session, signer.path).key_id == new.key_id
    assert not signer.path.with_name(signer.path.name + ".next").exists()


def test_the_key_file_is_private_and_kept_apart_from_the_store(tmp_path: Path) -> None:
    s = Signer.load(tmp_path / "k" / "key.pem")
    assert (s.path.stat().st_mode & 0o777) == 0o600
    assert (s.path.parent.stat().st_mode & 0o777) == 0o700
    with pytest.raises(ConflictError, match="must not lie inside"):
        check_apart(tmp_path / "store" / "keys" / "k.pem", tmp_path / "store")
    check_apart(tmp_path / "keys" / "k.pem", tmp_path / "store")


def test_reading_a_blob_verifies_it(store: ArtifactStore, plan_files: PlanFiles) -> None:
    sha = store.put_bytes(plan_files.weights)
    assert store.read_verified(sha, len(plan_files.weights)) == plan_files.weights
    assert store.problem(sha, len(plan_files.weights), cached=True) is None
    _rewrite(store, sha, _flip_bytes)
    assert store.problem(sha, cached=True) is not None  # ctime moved: re-hashed
    with pytest.raises(DamagedArtifactError, match="hashes to"):
        store.read_verified(sha)
    manifest = PlanManifest.from_json(plan_files.manifest)
    assert np.prod(manifest.weights[0].shape) > 0
