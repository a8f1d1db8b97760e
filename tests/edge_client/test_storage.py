"""Credentials (mode 0600 from the first byte), atomic files, the label store and state."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_client.credentials import Credentials, parse_labels
from edge_client.errors import (
    CredentialsError,
    InvalidInputError,
    NotEnrolledError,
)
from edge_client.storage import StateStore, atomic_write
from edge_client.store import LabelStore


def _creds(url: str = "http://127.0.0.1:1") -> Credentials:
    return Credentials(server_url=url, device_id="dev-7", device_token="s3cret-token")


def test_credentials_are_written_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    old = os.umask(0)  # even with a permissive umask
    try:
        _creds().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credentials.load(path).device_token == "s3cret-token"
    assert "s3cret" not in repr(Credentials.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]  # no temporary left


def test_replacing_credentials_keeps_mode_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    _creds().save(path)
    inode = path.stat().st_ino
    _creds("http://127.0.0.1:2").save(path)
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credentials.load(path).server_url == "http://127.0.0.1:2"


def test_credentials_readable_by_others_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    _creds().save(path)
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="must be 0600"):
        Credentials.load(path)


def test_missing_or_malformed_credentials(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolledError, match="agent enroll"):
        Credentials.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    atomic_write(bad, b"{not json", mode=0o600)
    with pytest.raises(CredentialsError, match="malformed"):
        Credentials.load(bad)


def test_parse_labels() -> None:
    assert parse_labels(["site=berlin", " line = 3 "]) == {"site": "berlin", "line": "3"}
    with pytest.raises(CredentialsError, match="key=value"):
        parse_labels(["nolabel"])


def test_label_store_bound_evicts_oldest(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.sqlite3", max_examples=5)
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert store.add("m", x[:4], np.arange(4)) == 4
    store.add("m", x[4:], np.arange(4, 8))
    assert store.count() == 5
    xs, ys = store.load("m", (3,))
    np.testing.assert_array_equal(xs, x[3:])  # the three oldest were evicted
    np.testing.assert_array_equal(ys, np.arange(3, 8))
    xs, ys = store.load("m", (3,), limit=2)
    np.testing.assert_array_equal(ys, [6, 7])
    assert store.load("m", (4,))[0].shape == (0, 4)  # another feature shape: not mixed in
    assert store.clear("m") == 5 and store.count() == 0


def test_label_store_refuses_bad_examples_without_storing(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.sqlite3")
    with pytest.raises(InvalidInputError):
        store.add("m", np.zeros((2, 3)), np.zeros(3, dtype=int))
    with pytest.raises(InvalidInputError, match="NaN"):
        store.add("m", np.array([[np.nan, 0, 0]]), np.array([1]))
    with pytest.raises(InvalidInputError, match="class indices"):
        store.add("m", np.zeros((1, 3)), np.array([0.5]))
    assert store.count() == 0


def test_label_store_is_shared_with_another_process(tmp_path: Path) -> None:
    """The ClientApp in the SuperNode's process reads what the agent wrote (WAL mode)."""
    path = tmp_path / "labels.sqlite3"
    store = LabelStore(path)
    store.add("m", np.ones((3, 2)), np.array([1, 0, 1]))
    code = (
        "import sys; from edge_client.store import LabelStore;"
        "x, y = LabelStore(sys.argv[1]).load('m', (2,)); print(len(y), int(y.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.split() == ["3", "2"]


def test_state_store_roundtrip_and_drift_snapshots(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite3")
    state.set("last_poll", {"ok": True})
    assert state.get("last_poll") == {"ok": True}
    assert state.get("missing", 5) == 5
    state.save_drift("m", 1, '{"n": 1}')
    state.save_drift("m", 1, '{"n": 2}')
    assert state.load_drift("m", 1) == '{"n": 2}'
    assert state.load_drift("m", 2) is None
    state.close()
    assert StateStore(tmp_path / "state.sqlite3").get("last_poll") == {"ok": True}
