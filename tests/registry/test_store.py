"""The content-addressed store: verified, atomic, never overwriting, never escaping its root."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from registry.errors import ArtifactTooLargeError, DigestMismatchError, NotFoundError
from registry.store import ArtifactStore, is_sha256
from tests.registry.support import run_in_threads


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tmp_files(store: ArtifactStore) -> list[Path]:
    return list(store.tmp.iterdir())


def test_stage_and_commit_stores_by_content(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = b"plan bytes" * 1000
    staged = store.stage(io.BytesIO(data), expected_sha256=sha(data), max_bytes=len(data))
    assert staged.sha256 == sha(data) and staged.size == len(data)
    assert not store.exists(sha(data))  # staged is not stored
    assert store.commit(staged) == sha(data)
    assert store.read_bytes(sha(data)) == data
    path = store.path(sha(data))
    assert path.is_relative_to(store.blobs)
    assert not stat.S_IMODE(path.stat().st_mode) & 0o222  # read-only
    assert tmp_files(store) == []
    assert store.verify(sha(data))


def test_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(DigestMismatchError, match="sha256 mismatch"):
        store.stage(io.BytesIO(b"abc"), expected_sha256=sha(b"abd"))
    assert tmp_files(store) == []
    assert not store.exists(sha(b"abc"))
    with pytest.raises(DigestMismatchError, match="64 lowercase hex"):
        store.stage(io.BytesIO(b"abc"), expected_sha256="../../etc/passwd")


def test_oversized_upload_stops_early_and_stores_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    read = []

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(100):
            read.append(i)
            yield b"x" * 1024

    with pytest.raises(ArtifactTooLargeError):
        store.stage(chunks(), max_bytes=4096)
    assert len(read) == 5  # stopped at the first chunk past the limit
    assert tmp_files(store) == []


def test_commit_never_overwrites(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put_bytes(b"same")
    inode = store.path(first).stat().st_ino
    second = store.put_bytes(b"same")
    assert first == second and store.path(first).stat().st_ino == inode
    assert tmp_files(store) == []


def test_concurrent_identical_commits(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = os.urandom(1 << 16)
    assert run_in_threads(lambda: store.put_bytes(data, expected_sha256=sha(data)), 8) == []
    assert store.read_bytes(sha(data)) == data
    assert tmp_files(store) == []


def test_paths_come_only_from_digests(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "/" + "0" * 63, "..", ""):
        assert not is_sha256(bad)
        with pytest.raises(ValueError):
            store.path(bad)
        assert not store.exists(bad)
        with pytest.raises(NotFoundError):
            store.open(bad)
    with pytest.raises(NotFoundError):
        store.open("0" * 64)


def test_staging_scope_discards_uncommitted(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging() as staging:
        staging.stage(io.BytesIO(b"one"))
        raise RuntimeError("upload failed later")
    assert tmp_files(store) == [] and not store.exists(sha(b"one"))
    with store.staging() as staging:
        staging.stage(io.BytesIO(b"two"))
        staging.commit_all()
    assert store.exists(sha(b"two"))


def test_cleanup_tmp_removes_stale_partial_uploads(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    stale = store.tmp / "upload-old.part"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    fresh = store.tmp / "upload-new.part"
    fresh.write_bytes(b"half")
    assert store.cleanup_tmp(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()
    assert store.healthy()
