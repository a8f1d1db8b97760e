"""Serving copies (edgefleet.frozen) against the plan's own ``infer`` signature.

Real plans in the real interpreter (``ai-edge-litert``, whose flatbuffer schema the rewrite
uses): the trained digits MLP, a heavy MLP 784 → 3072 → 3072 → 10 and a frozen-base convnet,
the last two authored by TensorFlow in a child process. A copy must answer what the plan answers
with the same weights, and refuse weights or plan bytes that do not belong to the manifest.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.errors import PlanError, PlanFormatError, PlanMismatchError, WeightsError
from edgefleet.frozen import FrozenRuntime, freeze_plan
from edgefleet.plan import PlanManifest, load_weights, weights_from_bytes
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, PlanRuntime
from tests.environments import main_env_python

pytest.importorskip("ai_edge_litert.schema_py_generated", reason="LiteRT's schema (.venv only)")

_BUILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from authoring.plans import build_dataset_plan, build_plan, make_model
    m = make_model("mlp", sample_shape=(784,), n_classes=10, hidden=(3072, 3072))
    rng = np.random.default_rng(0)
    x = rng.random((200, 784), dtype=np.float32); y = rng.integers(0, 10, 200)
    build_plan(m, sys.argv[1] + "/heavy", name="heavy-mlp",
               feature_names=[f"p{i}" for i in range(784)],
               class_labels=[str(i) for i in range(10)], x_reference=x, y_reference=y)
    build_dataset_plan(sys.argv[1] + "/convnet", dataset="digits", arch="convnet",
                       hidden=(16,), filters=4, seed=1)
    """
)


@pytest.fixture(scope="module")
def authored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frozen-plans")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([main_env_python(), "-c", _BUILD, str(out)], capture_output=True,
                          text=True, timeout=900, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the plans failed:\n{proc.stderr[-4000:]}")
    return out


def _files(plan_dir: Path) -> tuple[bytes, PlanManifest, dict[str, np.ndarray]]:
    manifest = PlanManifest.load(plan_dir / MANIFEST_FILE)
    return ((plan_dir / PLAN_FILE).read_bytes(), manifest,
            load_weights(plan_dir / WEIGHTS_FILE, manifest=manifest))


def _perturbed(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in weights.items()}


def _assert_same_answers(plan: bytes, manifest: PlanManifest, weights: dict[str, np.ndarray],
                         x: np.ndarray) -> None:
    reference = PlanRuntime.from_bytes(plan, manifest, weights)
    for fuse in (True, False):
        copy = FrozenRuntime(freeze_plan(plan, manifest, weights, fuse_dense=fuse), manifest)
        for rows in (1, 7, len(x)):
            want = reference.predict(x[:rows])
            got = copy.predict(x[:rows])
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_tiny_plans_copy_answers_as_its_infer_signature(
        digits_plan_dir: Path, digits_data: Dataset) -> None:
    plan, manifest, weights = _files(digits_plan_dir)  # trained: not the plan's baked weights
    x = np.asarray(digits_data.x_test[:300], dtype=np.float32)
    _assert_same_answers(plan, manifest, weights, x)
    _assert_same_answers(plan, manifest, _perturbed(weights, 1), x)


def test_the_heavy_plans_copy_answers_as_its_infer_signature(authored: Path) -> None:
    plan, manifest, weights = _files(authored / "heavy")
    x = np.random.default_rng(2).random((40, 784), dtype=np.float32)
    _assert_same_answers(plan, manifest, _perturbed(weights, 3), x)


def test_a_convnets_copy_keeps_its_constant_base(authored: Path, digits_data: Dataset) -> None:
    plan, manifest, weights = _files(authored / "convnet")
    x = np.asarray(digits_data.x_test[:50], dtype=np.float32).reshape(
        -1, *manifest.input.sample_shape)
    _assert_same_answers(plan, manifest, _perturbed(weights, 4), x)


def test_the_copy_uses_the_weights_it_was_given(digits_plan_dir: Path,
                                                digits_data: Dataset) -> None:
    plan, manifest, weights = _files(digits_plan_dir)
    x = np.asarray(digits_data.x_test[:20], dtype=np.float32)
    a = FrozenRuntime.freeze(plan, manifest, weights).predict(x)
    b = FrozenRuntime.freeze(plan, manifest, _perturbed(weights, 5)).predict(x)
    assert not np.allclose(a, b, atol=1e-3)


def test_weights_that_do_not_belong_are_refused(digits_plan_dir: Path, authored: Path) -> None:
    plan, manifest, weights = _files(digits_plan_dir)
    name = manifest.weights[0].name
    with pytest.raises(WeightsError, match="shape"):
        freeze_plan(plan, manifest, {**weights, name: np.zeros((3, 3), np.float32)})
    with pytest.raises(WeightsError, match="dtype"):
        freeze_plan(plan, manifest, {**weights, name: weights[name].astype(np.float64)})
    with pytest.raises(WeightsError, match="missing"):
        freeze_plan(plan, manifest, {k: v for k, v in weights.items() if k != name})
    bad = weights[name].copy()
    bad.flat[0] = np.nan
    with pytest.raises(WeightsError, match="NaN"):
        freeze_plan(plan, manifest, {**weights, name: bad})
    _, _, heavy_weights = _files(authored / "heavy")  # another plan's weights
    with pytest.raises(WeightsError):
        freeze_plan(plan, manifest, heavy_weights)


def test_a_corrupt_weights_file_or_plan_is_refused(digits_plan_dir: Path,
                                                   authored: Path) -> None:
    plan, manifest, _ = _files(digits_plan_dir)
    blob = bytearray((digits_plan_dir / WEIGHTS_FILE).read_bytes())
    blob[:8] = (len(blob) * 2).to_bytes(8, "little")  # a header longer than the file
    with pytest.raises(WeightsError):
        weights_from_bytes(bytes(blob), manifest=manifest)
    heavy_blob = (authored / "heavy" / WEIGHTS_FILE).read_bytes()
    with pytest.raises(PlanError):  # bound to another plan, or of other shapes
        weights_from_bytes(heavy_blob, manifest=manifest)
    _, _, weights = _files(digits_plan_dir)
    flipped = bytearray(plan)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(PlanMismatchError):
        freeze_plan(bytes(flipped), manifest, weights)
    with pytest.raises(PlanFormatError):
        freeze_plan(plan[: len(plan) // 2], manifest, weights)


def test_a_copy_only_infers(digits_plan_dir: Path, digits_data: Dataset) -> None:
    plan, manifest, weights = _files(digits_plan_dir)
    copy = FrozenRuntime.freeze(plan, manifest, weights)
    x = np.asarray(digits_data.x_train[:32], dtype=np.float32)
    y = np.asarray(digits_data.y_train[:32])
    with pytest.raises(PlanFormatError, match="cannot train"):
        copy.train_step(x, y, 0.1)
    with pytest.raises(PlanFormatError):
        copy.get_weights()
    with pytest.raises(PlanFormatError):
        copy.set_weights(weights)
    assert copy.evaluate(x, y).n == 32
