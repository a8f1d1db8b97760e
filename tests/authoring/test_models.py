"""Authoring: models convert builtins-only, train in TFLite exactly as in TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from authoring.convert import unsupported_ops  # noqa: E402
from authoring.errors import FlexOpsRequiredError, ModelDefinitionError  # noqa: E402
from authoring.models import MLP, FrozenConvNet  # noqa: E402
from authoring.plans import build_dataset_plan, build_plan  # noqa: E402
from edgefleet.datasets import Dataset  # noqa: E402
from edgefleet.plan import PlanManifest, load_weights, read_weights_metadata, sha256_file  # noqa: E402
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, PlanRuntime  # noqa: E402


@pytest.fixture(scope="module")
def small_mlp_plan(tmp_path_factory: pytest.TempPathFactory, digits_data: Dataset) -> Path:
    """Digits 64 → 16 → 12 ReLU → 10, preprocessing x/16, built in this process."""
    out = tmp_path_factory.mktemp("small-mlp")
    model = MLP(64, 10, hidden=(16, 12), scale=1 / 16, seed=3)
    build_plan(model, out, name="digits-small", feature_names=digits_data.feature_names,
               class_labels=digits_data.class_labels, x_reference=digits_data.x_train,
               y_reference=digits_data.y_train)
    return out


@pytest.fixture(scope="module")
def convnet_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("convnet")
    build_dataset_plan(out, dataset="digits", arch="convnet", hidden=(), filters=8, seed=1)
    return out


def _keras_step(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float,
                n_dense: int) -> tuple[float, dict[str, np.ndarray]]:
    """The same SGD step computed independently with Keras layers and a Keras loss."""
    layers = [tf.keras.layers.Dense(weights[f"dense_{i}_bias"].shape[0],
                                    activation="relu" if i < n_dense - 1 else None)
              for i in range(n_dense)]
    model = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), *layers])
    for i, layer in enumerate(layers):
        layer.set_weights([weights[f"dense_{i}_kernel"], weights[f"dense_{i}_bias"]])
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x / 16.0))
    grads = tape.gradient(loss, model.trainable_variables)
    new: dict[str, np.ndarray] = {}
    for i, layer in enumerate(layers):
        k_grad, b_grad = grads[2 * i], grads[2 * i + 1]
        new[f"dense_{i}_kernel"] = weights[f"dense_{i}_kernel"] - lr * k_grad.numpy()
        new[f"dense_{i}_bias"] = weights[f"dense_{i}_bias"] - lr * b_grad.numpy()
        assert layer.kernel.shape == new[f"dense_{i}_kernel"].shape
    return float(loss), new


def test_tflite_train_step_equals_tensorflow(small_mlp_plan: Path, digits_data: Dataset) -> None:
    rt = PlanRuntime.from_dir(small_mlp_plan)
    b = rt.manifest.train_batch_size
    weights = rt.get_weights()
    lr = 0.3
    for step in range(3):
        x = digits_data.x_train[step * b : (step + 1) * b]
        y = digits_data.y_train[step * b : (step + 1) * b]
        want_loss, want = _keras_step(weights, x, y, lr, n_dense=3)
        got_loss = rt.train_step(x, y, lr)
        got = rt.get_weights()
        assert got_loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6,
                                       err_msg=f"step {step}: {name}")
        assert any(not np.array_equal(got[n], weights[n]) for n in got)
        weights = got


def test_manifest_describes_the_plan(small_mlp_plan: Path, digits_data: Dataset) -> None:
    manifest = PlanManifest.load(small_mlp_plan / MANIFEST_FILE)
    assert manifest.plan_sha256 == sha256_file(small_mlp_plan / PLAN_FILE)
    assert manifest.plan_size == (small_mlp_plan / PLAN_FILE).stat().st_size
    assert manifest.weight_names() == ["dense_0_kernel", "dense_0_bias", "dense_1_kernel",
                                       "dense_1_bias", "dense_2_kernel", "dense_2_bias"]
    assert [w.shape for w in manifest.weights][:2] == [[64, 16], [16]]
    assert manifest.input.shape == [None, 64]
    assert manifest.input.preprocessing.kind == "affine"
    assert manifest.input.preprocessing.scale == pytest.approx(1 / 16)
    assert manifest.output.class_labels == [str(i) for i in range(10)]
    assert manifest.architecture["hidden"] == [16, 12]
    assert {"tensorflow", "python", "numpy", "edgefleet"} <= set(manifest.built_with)
    assert manifest.reference is not None
    assert manifest.reference.n_samples == len(digits_data.x_train)
    assert sum(manifest.reference.class_counts) == len(digits_data.y_train)
    raw = (small_mlp_plan / WEIGHTS_FILE).read_bytes()
    assert read_weights_metadata(raw)["plan_sha256"] == manifest.plan_sha256
    initial = load_weights(small_mlp_plan / WEIGHTS_FILE, manifest=manifest)
    limit = np.sqrt(6 / (64 + 16))  # Glorot uniform, zero biases
    assert np.abs(initial["dense_0_kernel"]).max() <= limit
    assert not initial["dense_0_bias"].any()


def test_raw_features_are_scaled_inside_the_plan(small_mlp_plan: Path,
                                                 digits_data: Dataset) -> None:
    rt = PlanRuntime.from_dir(small_mlp_plan)
    w = rt.get_weights()
    h = digits_data.x_test[:20] / 16.0
    for i in range(3):
        h = h @ w[f"dense_{i}_kernel"] + w[f"dense_{i}_bias"]
        h = np.maximum(h, 0) if i < 2 else h
    expected = np.exp(h - h.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(rt.predict(digits_data.x_test[:20]), expected, atol=1e-5)


def test_image_model_trains_head_only(convnet_plan: Path, digits_data: Dataset) -> None:
    rt = PlanRuntime.from_dir(convnet_plan)
    manifest = rt.manifest
    assert manifest.input.shape == [None, 8, 8, 1]
    assert manifest.weight_names() == ["out_kernel", "out_bias"]  # the conv base is not a weight
    assert manifest.weights[0].shape == [4 * 4 * 8, 10]
    x_test = digits_data.x_test.reshape(-1, 8, 8, 1)
    initial = rt.get_weights()
    before = rt.predict(x_test)
    rt.fit(digits_data.images("train"), digits_data.y_train, epochs=10, lr=0.1)
    assert rt.evaluate(x_test, digits_data.y_test).accuracy >= 0.85
    np.testing.assert_allclose(rt.predict(digits_data.x_test), rt.predict(x_test))  # flat rows
    rt.set_weights(initial)  # with the head restored, the plan computes exactly what it did:
    np.testing.assert_array_equal(rt.predict(x_test), before)  # the base did not move


def test_image_model_base_is_not_trainable() -> None:
    model = FrozenConvNet((8, 8, 1), 10, filters=4, head_hidden=(8,))
    names = sorted(v.name.split(":")[0] for v in model.trainable_variables)
    assert names == ["head_0_bias", "head_0_kernel", "out_bias", "out_kernel"]
    x = tf.random.uniform((32, 8, 8, 1))
    y = tf.zeros(32, tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = model.loss(x, y)
    assert tape.gradient(loss, x) is None  # stop_gradient: nothing flows into the base


class _KerasReluMLP(MLP):
    """tf.nn.relu's gradient is ReluGrad, which has no TFLite builtin kernel."""

    def activation(self, z):  # type: ignore[no-untyped-def]
        return tf.nn.relu(z)


def test_flex_op_fails_at_authoring_time_naming_the_op(tmp_path: Path) -> None:
    with pytest.raises(FlexOpsRequiredError, match="ReluGrad") as info:
        build_plan(_KerasReluMLP(4, 3, (5,)), tmp_path, name="bad",
                   feature_names=list("abcd"), class_labels=list("xyz"))
    assert info.value.ops == ["ReluGrad"]
    assert info.value.signature == "train"
    assert "in signature 'train'" in str(info.value)
    assert not (tmp_path / PLAN_FILE).exists()


def test_unsupported_ops_parses_converter_messages() -> None:
    msg = ("error: 'tf.ReluGrad' op is neither a custom op nor a flex op\n"
           "TF Select ops: BroadcastGradientArgs, ReluGrad, SparseSoftmaxCrossEntropyWithLogits\n"
           "Details:\n\ttf.ReluGrad(tensor<32x4xf32>) -> (tensor<32x4xf32>) : {device = \"\"}\n")
    assert unsupported_ops(msg) == ["BroadcastGradientArgs", "ReluGrad",
                                    "SparseSoftmaxCrossEntropyWithLogits"]
    assert unsupported_ops("Flex ops: FlexErf, FlexReluGrad") == ["Erf", "ReluGrad"]
    assert unsupported_ops("something else went wrong") == []


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLP(0, 3), "sample shape"),
        (lambda: MLP(4, 1), "at least 2 classes"),
        (lambda: MLP(4, 3, (0,)), "size"),
        (lambda: MLP(4, 3, train_batch_size=0), "train_batch_size"),
        (lambda: MLP(4, 3, scale=[1.0, 2.0]), "preprocessing"),
        (lambda: FrozenConvNet((8, 8), 3), r"\(h, w, c\)"),
        (lambda: FrozenConvNet((8, 8, 1), 3, base_kernel=np.zeros((5, 5, 1, 2))), "base_kernel"),
    ],
)
def test_invalid_definitions_are_refused(make, match: str) -> None:
    with pytest.raises(ModelDefinitionError, match=match):
        make()


def test_build_plan_checks_names(tmp_path: Path) -> None:
    with pytest.raises(ModelDefinitionError, match="feature names"):
        build_plan(MLP(4, 3), tmp_path, name="x", feature_names=["a"], class_labels=list("xyz"))
