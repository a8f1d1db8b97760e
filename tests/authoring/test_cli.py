"""``edgefleet model build|inspect|train|demo`` through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.plan import PlanManifest, load_weights
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE
from edgefleet_cli.main import app

runner = CliRunner()


@pytest.fixture
def plan_copy(digits_plan_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "plan"
    shutil.copytree(digits_plan_dir, out)
    return out


def test_inspect_prints_summary_and_smoke_inference(digits_plan_dir: Path) -> None:
    result = runner.invoke(app, ["model", "inspect", str(digits_plan_dir)])
    assert result.exit_code == 0, result.output
    manifest = PlanManifest.load(digits_plan_dir / MANIFEST_FILE)
    for part in ("digits-mlp", manifest.plan_sha256, "dense_0_kernel", "static batch 32",
                 "affine", "smoke", "probabilities sum 1.0000"):
        assert part in result.output


def test_inspect_refuses_a_corrupt_plan(plan_copy: Path) -> None:
    plan = (plan_copy / PLAN_FILE).read_bytes()
    (plan_copy / PLAN_FILE).write_bytes(plan[: len(plan) // 3])
    result = runner.invoke(app, ["model", "inspect", str(plan_copy)])
    assert result.exit_code == 1
    assert "truncated or corrupt" in result.output


def test_train_runs_without_tensorflow_and_writes_weights(plan_copy: Path) -> None:
    before = load_weights(plan_copy / WEIGHTS_FILE)
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from edgefleet_cli.main import app
        r = CliRunner().invoke(app, ["model", "train", {str(plan_copy)!r}, "--epochs", "2"])
        print(r.output)
        assert r.exit_code == 0, r.output
        heavy = [m for m in ("tensorflow", "keras") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch  2" in proc.stdout and "test accuracy" in proc.stdout
    manifest = PlanManifest.load(plan_copy / MANIFEST_FILE)
    after = load_weights(plan_copy / WEIGHTS_FILE, manifest=manifest)  # still bound to the plan
    assert any(not (after[k] == before[k]).all() for k in before)
    assert not list(plan_copy.glob("*.tmp"))


def test_build_other_dataset(tmp_path: Path) -> None:
    out = tmp_path / "iris"
    result = runner.invoke(app, ["model", "build", "--dataset", "iris", "--hidden", "8,4",
                                 "--batch-size", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["architecture"]["hidden"] == [8, 4]
    assert manifest["architecture"]["dataset"] == "iris"
    assert manifest["train_batch_size"] == 16
    assert manifest["input"]["preprocessing"]["kind"] == "affine"
    assert len(manifest["input"]["preprocessing"]["scale"]) == 4  # standardised per feature
    trained = runner.invoke(app, ["model", "train", str(out), "--epochs", "30"])
    assert trained.exit_code == 0, trained.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--arch", "transformer"], "--arch must be one of"),
        (["--hidden", "sixty"], "--hidden takes"),
        (["--dataset", "mnist"], "unknown data set"),
        (["--arch", "convnet", "--dataset", "wine"], "no image shape"),
    ],
)
def test_build_refuses_bad_options(tmp_path: Path, args: list[str], match: str) -> None:
    result = runner.invoke(app, ["model", "build", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code != 0
    assert match in result.output


def test_demo_reaches_target(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["model", "demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "meets the 0.90 target" in result.output
    assert (out / PLAN_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
