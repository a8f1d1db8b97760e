"""Precompute: batch scoring into the prediction store, resumable, looked up over HTTP.

Real databases (SQLite and PostgreSQL), real interpreters, the real CLI in a child process for
the kill-and-restart test, and the app over TestClient for the lookup route.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from edgefleet.datasets import Dataset
from edgefleet.errors import InputError
from edgefleet_cli.main import app
from registry.db import session_scope
from registry.models import ModelVersion, PrecomputeRun, PrecomputeStatus, Prediction
from server.precompute import make_service, precompute
from tests.server.broker_support import ServedModel
from tests.server.support import APP_KEY

ROOT = Path(__file__).resolve().parents[2]
FEATURES = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
AUTH = {"Authorization": f"Bearer {APP_KEY}"}


def features(data: Dataset, n: int) -> np.ndarray:
    x = np.concatenate([data.x_train, data.x_test])
    return np.resize(x, (n, x.shape[1])).astype(np.float32)


def write_csv(path: Path, x: np.ndarray, *, shuffle_columns: bool = False) -> list[str]:
    keys = [f"cust-{i:06d}" for i in range(len(x))]
    names = list(FEATURES)
    order = list(range(64))
    if shuffle_columns:  # the plan's feature names in another order, plus an extra column
        order = list(np.random.default_rng(0).permutation(64))
        names = [FEATURES[j] for j in order]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["note", *names[:10], "customer", *names[10:]])
        for key, row in zip(keys, x, strict=True):
            vals = [repr(float(row[j])) for j in order]
            w.writerow(["n/a", *vals[:10], key, *vals[10:]])
    return keys


def stored(engine: Engine, version: int = 1) -> dict[str, tuple[list[float], object]]:
    with session_scope(engine) as s:
        rows = s.execute(
            sa.select(Prediction)
            .join(ModelVersion, ModelVersion.id == Prediction.version_id)  # type: ignore[arg-type]
            .where(ModelVersion.number == version)  # type: ignore[arg-type]
        ).scalars()
        return {p.key: (p.probabilities, p.computed_at) for p in rows}


def test_csv_npz_and_parquet_are_scored_like_the_model(
    served_model: ServedModel, digits_data: Dataset, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = features(digits_data, 700)
    keys = write_csv(tmp_path / "in.csv", x, shuffle_columns=True)
    np.savez(tmp_path / "in.npz", customer=np.arange(len(x)) + 10_000, x=x)
    pq.write_table(
        pa.table({"customer": [f"pq-{i}" for i in range(len(x))],
                  **{n: x[:, j] for j, n in enumerate(FEATURES)}}),
        tmp_path / "in.parquet", row_group_size=128,
    )
    service = make_service(served_model.settings)
    chunks: list[int] = []
    report = precompute(served_model.engine, service, "digits", tmp_path / "in.csv", "customer",
                        chunk_size=256, on_chunk=chunks.append)
    assert (report.version, report.alias, report.rows_scored) == (1, "production", 700)
    assert chunks == [256, 256, 188]
    for name in ("in.npz", "in.parquet"):
        r = precompute(served_model.engine, service, "digits", tmp_path / name, "customer",
                       version=1, chunk_size=300)
        assert (r.rows_total, r.rows_scored, r.alias) == (700, 700, None)
    got = stored(served_model.engine)
    assert len(got) == 3 * 700
    expected = served_model.expected(1, x)
    for i in (0, 1, 299, 699):
        for key in (keys[i], str(10_000 + i), f"pq-{i}"):
            np.testing.assert_allclose(got[key][0], expected[i], rtol=1e-5, atol=1e-6)


def test_lookup_answers_from_the_store_and_follows_the_alias(
    served_model: ServedModel, digits_data: Dataset, tmp_path: Path, client: TestClient
) -> None:
    x = features(digits_data, 50)
    keys = write_csv(tmp_path / "in.csv", x)
    service = make_service(served_model.settings)
    precompute(served_model.engine, service, "digits", tmp_path / "in.csv", "customer")
    # the candidate is precomputed before it becomes production
    r2 = precompute(served_model.engine, service, "digits", tmp_path / "in.csv", "customer",
                    version=2)
    assert r2.version == 2 and r2.alias is None
    url = f"/api/v1/models/digits/predictions/{keys[7]}"
    before = client.get(url, headers=AUTH)
    assert before.status_code == 200, before.text
    body = before.json()
    assert (body["version"], body["alias"], body["key"]) == (1, "production", keys[7])
    np.testing.assert_allclose(body["probabilities"], served_model.expected(1, x[7:8])[0],
                               rtol=1e-5, atol=1e-6)
    assert body["label"] == body["class_labels"][int(np.argmax(body["probabilities"]))]
    served_model.move_production(2)
    after = client.get(url, headers=AUTH).json()
    assert (after["version"], after["alias"]) == (2, "production")
    np.testing.assert_allclose(after["probabilities"], served_model.expected(2, x[7:8])[0],
                               rtol=1e-5, atol=1e-6)
    pinned = client.get(url, params={"version": 1}, headers=AUTH).json()
    assert (pinned["version"], pinned["alias"]) == (1, None)
    missing = client.get("/api/v1/models/digits/predictions/nobody", headers=AUTH)
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    assert "version 2 (production)" in missing.json()["detail"]
    assert client.get(url).status_code == 401
    assert client.get("/api/v1/models/nope/predictions/x", headers=AUTH).status_code == 404
    assert client.get(url, params={"alias": "canary"}, headers=AUTH).status_code == 404


def _wait_committed(engine: Engine, at_least: int, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            done = s.execute(sa.select(PrecomputeRun.rows_done)).scalar()  # type: ignore[call-overload]
        if done is not None and done >= at_least:
            return int(done)
        assert proc.poll() is None, "precompute finished before it could be killed"
        time.sleep(0.02)
    raise AssertionError("precompute made no progress")


@pytest.mark.slow
def test_killed_half_way_and_restarted_scores_each_key_once(
    served_model: ServedModel, digits_data: Dataset, tmp_path: Path
) -> None:
    n = 20_000
    x = features(digits_data, n)
    keys = write_csv(tmp_path / "big.csv", x)
    env = {
        **os.environ,
        "EDGEFLEET_SERVER_DATABASE_URL": served_model.settings.database_url,
        "EDGEFLEET_SERVER_ARTIFACT_DIR": str(served_model.settings.artifact_dir),
    }
    cmd = [sys.executable, "-m", "edgefleet_cli", "server", "precompute", "--model", "digits",
           "--input", str(tmp_path / "big.csv"), "--key-column", "customer",
           "--chunk-size", "25", "--no-progress"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    _wait_committed(served_model.engine, n // 10, first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    before = stored(served_model.engine)
    with session_scope(served_model.engine) as s:
        run = s.execute(sa.select(PrecomputeRun)).scalar_one()
    assert 0 < run.rows_done < n and run.status == PrecomputeStatus.RUNNING
    assert len(before) == run.rows_done  # committed rows and predictions agree
    resume = [*cmd[:-3], "--chunk-size", "4000", "--no-progress"]  # chunks need not match
    second = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"scored {n - run.rows_done} of {n} rows ({run.rows_done} committed before)" in (
        second.stdout
    )
    after = stored(served_model.engine)
    assert sorted(after) == sorted(keys)  # every key, once
    assert all(after[k][1] == at for k, (_, at) in before.items())  # none scored twice
    with session_scope(served_model.engine) as s:
        done = s.execute(sa.select(PrecomputeRun)).scalar_one()
        n_rows = s.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one()
    assert (done.status, done.rows_done, n_rows) == (PrecomputeStatus.DONE, n, n)
    expected = served_model.expected(1, x[[0, n // 2, n - 1]])
    for i, k in enumerate((keys[0], keys[n // 2], keys[-1])):
        np.testing.assert_allclose(after[k][0], expected[i], rtol=1e-5, atol=1e-6)


def test_a_finished_run_is_not_scored_again_unless_restarted(
    served_model: ServedModel, digits_data: Dataset, tmp_path: Path
) -> None:
    write_csv(tmp_path / "in.csv", features(digits_data, 40))
    service = make_service(served_model.settings)
    args = (served_model.engine, service, "digits", tmp_path / "in.csv", "customer")
    assert precompute(*args).rows_scored == 40
    again = precompute(*args)
    assert (again.rows_scored, again.rows_resumed) == (0, 40)
    redo = precompute(*args, restart=True)
    assert (redo.rows_scored, redo.rows_resumed) == (40, 0)
    assert len(stored(served_model.engine)) == 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,a,b\n1,2,3\n", "the plan takes 64 features"),
        ("customer," + ",".join(FEATURES) + "\nk1," + ",".join(["x"] * 64) + "\n", "rows 0..0"),
        ("", "empty"),
    ],
)
def test_unusable_input_is_refused_before_anything_is_stored(
    served_model: ServedModel, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    key = "id" if content.startswith("id") else "customer"
    with pytest.raises(InputError, match=message):
        precompute(served_model.engine, make_service(served_model.settings), "digits", path, key)
    assert stored(served_model.engine) == {}


def test_cli_reports_errors_in_one_line(
    served_model: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER_DATABASE_URL", served_model.settings.database_url)
    monkeypatch.setenv("EDGEFLEET_SERVER_ARTIFACT_DIR", str(served_model.settings.artifact_dir))
    (tmp_path / "in.txt").write_text("x")
    runner = CliRunner()
    r = runner.invoke(app, ["server", "precompute", "--model", "digits", "--input",
                            str(tmp_path / "in.txt"), "--key-column", "id"])
    assert r.exit_code == 1 and "unknown input format" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["server", "precompute", "--model", "nope", "--input",
                            str(tmp_path / "in.txt"), "--key-column", "id"])
    assert r.exit_code == 1 and "'nope'" in r.output
    write_csv(tmp_path / "ok.csv", np.zeros((3, 64), dtype=np.float32))
    r = runner.invoke(app, ["server", "precompute", "--model", "digits", "--alias", "canary",
                            "--input", str(tmp_path / "ok.csv"), "--key-column", "customer"])
    assert r.exit_code == 1 and "no alias 'canary'" in r.output
    r = runner.invoke(app, ["server", "precompute", "--model", "digits", "--version", "2",
                            "--input", str(tmp_path / "ok.csv"), "--key-column", "customer",
                            "--no-progress"])
    assert r.exit_code == 0 and "version 2 scored 3 of 3 rows" in r.output, r.output
