"""PlanRuntime on a real digits plan in the real interpreters (no TensorFlow in these tests).

They run in both test environments (see :mod:`tests.environments`), each on its own interpreter:
``ai-edge-litert`` under numpy 2 in ``.venv``, ``tflite-runtime`` under numpy 1 in
``.venv-tflite``; there the two are also compared on the same plan and data.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.errors import (
    InputError,
    InterpreterUnavailable,
    PlanError,
    PlanFormatError,
    PlanMismatchError,
    WeightsError,
)
from edgefleet.interpreters import available_interpreters, interpreter_class
from edgefleet.plan import PlanManifest, load_weights, save_weights
from edgefleet.runtime import (
    MANIFEST_FILE,
    MAX_PREDICT_CHUNK,
    PLAN_FILE,
    WEIGHTS_FILE,
    PlanRuntime,
)
from tests.environments import ENV_INTERPRETER, ENV_NAME, TFLITE_ENV, main_env_python


@pytest.fixture
def runtime(digits_plan_dir: Path) -> PlanRuntime:
    return PlanRuntime.from_dir(digits_plan_dir)


@pytest.fixture
def plan_copy(digits_plan_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "plan"
    shutil.copytree(digits_plan_dir, out)
    return out


def _untrained(plan_dir: Path, interpreter: str = "auto") -> PlanRuntime:
    """The plan with the initial weights baked into its flatbuffer at authoring time."""
    manifest = PlanManifest.load(plan_dir / MANIFEST_FILE)
    return PlanRuntime.from_bytes((plan_dir / PLAN_FILE).read_bytes(), manifest,
                                  interpreter=interpreter)


# --- loading and interpreters ---------------------------------------------------------------
def test_from_dir_predicts_probabilities(runtime: PlanRuntime, digits_data: Dataset) -> None:
    probs = runtime.predict(digits_data.x_test[:10])
    assert probs.shape == (10, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert runtime.interpreter_name == ENV_INTERPRETER


def test_auto_picks_the_environments_interpreter() -> None:
    # .venv has only LiteRT (tflite-runtime cannot live with numpy 2); .venv-tflite only
    # tflite-runtime, so there "auto" falls back to it.
    assert available_interpreters() == [ENV_INTERPRETER], ENV_NAME
    assert interpreter_class("auto")[0] == ENV_INTERPRETER
    with pytest.raises(ValueError, match="unknown interpreter"):
        interpreter_class("onnxruntime")


# The main environment's side of the comparison: LiteRT under numpy 2, same plan, same data.
_LITERT_SIDE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from edgefleet.runtime import PlanRuntime
    plan_dir, data, out = sys.argv[1:4]
    d = np.load(data)
    rt = PlanRuntime.from_dir(plan_dir, interpreter="litert")
    probs = rt.predict(d["x_test"])
    fit = rt.fit(d["x_train"], d["y_train"], epochs=2, lr=0.05, seed=3)
    np.savez(out, probs=probs, losses=np.array(fit.epoch_losses), interpreter=rt.interpreter_name,
             numpy=np.__version__, **{"w_" + k: v for k, v in rt.get_weights().items()})
    """
)


@pytest.mark.skipif(not TFLITE_ENV, reason="compares tflite-runtime (in .venv-tflite, where "
                    "scripts/test.sh runs this test) with LiteRT in the main environment")
def test_interpreters_agree_across_environments(
    digits_plan_dir: Path, digits_data: Dataset, tmp_path: Path
) -> None:
    data, out = tmp_path / "data.npz", tmp_path / "litert.npz"
    np.savez(data, x_test=digits_data.x_test, x_train=digits_data.x_train,
             y_train=digits_data.y_train)
    proc = subprocess.run(
        [main_env_python(), "-c", _LITERT_SIDE, str(digits_plan_dir), str(data), str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lite = np.load(out)
    assert str(lite["interpreter"]) == "ai-edge-litert" and str(lite["numpy"]).startswith("2.")
    tfl = PlanRuntime.from_dir(digits_plan_dir)
    assert tfl.interpreter_name == "tflite-runtime" and np.__version__.startswith("1.")
    np.testing.assert_allclose(tfl.predict(digits_data.x_test), lite["probs"],
                               rtol=1e-5, atol=1e-6)
    fit = tfl.fit(digits_data.x_train, digits_data.y_train, epochs=2, lr=0.05, seed=3)
    np.testing.assert_allclose(fit.epoch_losses, lite["losses"], rtol=1e-4)
    weights = tfl.get_weights()
    assert sorted("w_" + k for k in weights) == sorted(k for k in lite.files if k[:2] == "w_")
    for name, value in weights.items():
        np.testing.assert_allclose(value, lite["w_" + name], rtol=1e-4, atol=1e-5)


def test_training_from_scratch_reaches_090(digits_plan_dir: Path, digits_data: Dataset) -> None:
    rt = _untrained(digits_plan_dir)
    before = rt.evaluate(digits_data.x_test, digits_data.y_test)
    result = rt.fit(digits_data.x_train, digits_data.y_train, epochs=15, lr=0.1, seed=0)
    after = rt.evaluate(digits_data.x_test, digits_data.y_test)
    assert before.accuracy < 0.3
    assert after.accuracy >= 0.90, after
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert after.n == len(digits_data.y_test) and after.loss < before.loss


# --- predict ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 3, MAX_PREDICT_CHUNK + 5])
def test_predict_any_batch_size(runtime: PlanRuntime, digits_data: Dataset, n: int) -> None:
    x = np.resize(digits_data.x_test, (n, 64))
    probs = runtime.predict(x)
    assert probs.shape == (n, 10)
    if n:
        one_by_one = np.concatenate([runtime.predict(x[i : i + 1]) for i in (0, n - 1)])
        np.testing.assert_allclose(probs[[0, n - 1]], one_by_one, rtol=1e-5, atol=1e-6)


def test_predict_casts_integer_and_float64(runtime: PlanRuntime, digits_data: Dataset) -> None:
    x = digits_data.x_test[:5]
    expected = runtime.predict(x)
    np.testing.assert_allclose(runtime.predict(x.astype(np.int64)), expected, atol=1e-6)
    np.testing.assert_allclose(runtime.predict(x.astype(np.float64).tolist()), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((2, 63)), r"shape \[2, 63\], expected \[n, 64\]"),
        (np.zeros(64), r"add a batch dimension"),
        (np.zeros((2, 8, 8)), "shape"),
        (np.array([["a"] * 64]), "numeric"),
        (np.full((1, 64), np.nan), "NaN/inf"),
        (np.full((1, 64), 1e300), "NaN/inf"),
        (np.zeros((1, 64), dtype=complex), "real numbers"),
    ],
)
def test_predict_rejects_bad_input(runtime: PlanRuntime, x: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        runtime.predict(x)


# --- train_step / fit / evaluate -----------------------------------------------------------
def test_train_step_validates(runtime: PlanRuntime, digits_data: Dataset) -> None:
    b = runtime.manifest.train_batch_size
    x, y = digits_data.x_train[:b], digits_data.y_train[:b]
    with pytest.raises(InputError, match=f"exactly {b} rows"):
        runtime.train_step(x[:-1], y[:-1], 0.1)
    with pytest.raises(InputError, match=r"labels must be in \[0, 10\)"):
        runtime.train_step(x, np.full(b, 10), 0.1)
    with pytest.raises(InputError, match="labels must be integers"):
        runtime.train_step(x, y + 0.5, 0.1)
    for lr in (-0.1, float("nan"), "0.1"):
        with pytest.raises(InputError, match="learning rate"):
            runtime.train_step(x, y, lr)  # type: ignore[arg-type]
    loss = runtime.train_step(x, y, 0.0)
    assert np.isfinite(loss) and loss > 0


def test_fit_wraps_last_partial_batch(plan_copy: Path, digits_data: Dataset) -> None:
    rt = PlanRuntime.from_dir(plan_copy)
    b = rt.manifest.train_batch_size
    n = b + 8  # one full batch and a partial one, filled by wrapping around
    result = rt.fit(digits_data.x_train[:n], digits_data.y_train[:n], epochs=3)
    assert (result.epochs, result.steps, result.examples) == (3, 6, 6 * b)
    tiny = rt.fit(digits_data.x_train[:5], digits_data.y_train[:5], epochs=2)
    assert (tiny.steps, tiny.examples) == (2, 2 * b)


def test_fit_is_deterministic_and_stoppable(digits_plan_dir: Path, digits_data: Dataset) -> None:
    runs = [_untrained(digits_plan_dir) for _ in range(2)]
    for rt in runs:
        rt.fit(digits_data.x_train, digits_data.y_train, epochs=1, seed=7)
    w0, w1 = (rt.get_weights() for rt in runs)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)

    calls = []

    def should_continue() -> bool:
        calls.append(1)
        return len(calls) <= 4

    result = runs[0].fit(digits_data.x_train, digits_data.y_train, epochs=5,
                         should_continue=should_continue)
    assert result.stopped and result.steps == 4 and result.epochs == 0
    assert result.epoch_losses == [] and result.partial_loss is not None
    assert result.loss == result.partial_loss > 0
    calls.clear()
    calls.extend([1] * 10)  # refuses before the first step
    nothing = runs[0].fit(digits_data.x_train, digits_data.y_train, should_continue=should_continue)
    assert nothing.stopped and nothing.steps == 0 and np.isnan(nothing.loss)


def test_fit_and_evaluate_reject_empty(runtime: PlanRuntime) -> None:
    with pytest.raises(InputError, match="empty"):
        runtime.fit(np.zeros((0, 64)), np.zeros(0, np.int32))
    with pytest.raises(InputError, match="empty"):
        runtime.evaluate(np.zeros((0, 64)), np.zeros(0, np.int32))
    with pytest.raises(InputError, match="labels have shape"):
        runtime.evaluate(np.zeros((3, 64)), np.zeros(2, np.int32))


def test_predict_is_thread_safe(runtime: PlanRuntime, digits_data: Dataset) -> None:
    expected = runtime.predict(digits_data.x_test)
    results: list[np.ndarray] = []

    def work(n: int) -> None:
        for _ in range(20):
            results.append(runtime.predict(digits_data.x_test[: n + 1]))

    threads = [threading.Thread(target=work, args=(n,)) for n in (0, 7, 100, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 80
    for r in results:
        np.testing.assert_allclose(r, expected[: len(r)], rtol=1e-5, atol=1e-6)


# --- weights ----------------------------------------------------------------------------------
def test_weights_round_trip_bitwise(plan_copy: Path) -> None:
    rt = PlanRuntime.from_dir(plan_copy)
    first = rt.get_weights()
    assert list(first) == rt.manifest.weight_names()
    path = plan_copy / "roundtrip.safetensors"
    save_weights(path, first, plan_sha256=rt.manifest.plan_sha256)
    other = _untrained(plan_copy)
    other.set_weights(load_weights(path, manifest=rt.manifest))
    again = other.get_weights()
    for name, value in first.items():
        assert again[name].dtype == value.dtype
        assert again[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda w: w.update(dense_0_kernel=np.zeros((64, 63), np.float32)), "shape"),
        (lambda w: w.update(dense_1_bias=w["dense_1_bias"].astype(np.float64)), "dtype"),
        (lambda w: w.pop("dense_1_bias"), "missing"),
        (lambda w: w.update(extra=np.zeros(3, np.float32)), "unexpected"),
        (lambda w: w.update(dense_1_bias=np.full(10, np.nan, np.float32)), "NaN"),
    ],
)
def test_set_weights_refuses_and_keeps_weights(runtime: PlanRuntime, mutate, match: str) -> None:
    before = runtime.get_weights()
    bad = {k: v.copy() for k, v in before.items()}
    mutate(bad)
    with pytest.raises(WeightsError, match=match):
        runtime.set_weights(bad)
    after = runtime.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_weights_file_of_another_plan_is_refused(plan_copy: Path) -> None:
    rt = PlanRuntime.from_dir(plan_copy)
    save_weights(plan_copy / WEIGHTS_FILE, rt.get_weights(), plan_sha256="0" * 64)
    with pytest.raises(PlanMismatchError, match="weights were made for plan"):
        PlanRuntime.from_dir(plan_copy)


# --- corrupt, truncated and mismatched plans ----------------------------------------------
def test_truncated_plan_is_a_format_error(plan_copy: Path) -> None:
    plan = (plan_copy / PLAN_FILE).read_bytes()
    manifest = PlanManifest.load(plan_copy / MANIFEST_FILE)
    for cut in (len(plan) - 1, len(plan) // 2, 100, 10):
        with pytest.raises(PlanFormatError, match=r"truncated|not a TFLite flatbuffer"):
            PlanRuntime.from_bytes(plan[:cut], manifest)


def test_corrupt_plan_fails_clearly(plan_copy: Path) -> None:
    plan = bytearray((plan_copy / PLAN_FILE).read_bytes())
    manifest = PlanManifest.load(plan_copy / MANIFEST_FILE)
    not_tflite = bytes(plan[:4]) + b"XXXX" + bytes(plan[8:])
    with pytest.raises(PlanFormatError, match="file identifier"):
        PlanRuntime.from_bytes(not_tflite, manifest)
    with pytest.raises(PlanFormatError, match="not a TFLite flatbuffer"):
        PlanRuntime.from_bytes(b"", manifest)
    rng = np.random.default_rng(0)
    for _ in range(20):  # damaged bytes never reach (and crash) the native interpreter
        damaged = bytearray(plan)
        pos = int(rng.integers(8, len(plan) - 64))
        damaged[pos : pos + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        with pytest.raises(PlanError, match=r"truncated or corrupt|does not match"):
            PlanRuntime.from_bytes(bytes(damaged), manifest)


def test_plan_dir_missing_files(plan_copy: Path) -> None:
    (plan_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(PlanFormatError, match=r"lacks weights\.safetensors"):
        PlanRuntime.from_dir(plan_copy)
    (plan_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(PlanFormatError):
        PlanManifest.load(plan_copy / MANIFEST_FILE)


def test_manifest_of_another_plan_is_a_mismatch(plan_copy: Path) -> None:
    manifest = PlanManifest.load(plan_copy / MANIFEST_FILE)
    other = manifest.model_copy(update={"plan_sha256": "ab" * 32})
    with pytest.raises(PlanMismatchError, match="does not match its manifest"):
        PlanRuntime.from_bytes((plan_copy / PLAN_FILE).read_bytes(), other)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("batch", r"train input 'x' is float32\[32, 64\], manifest implies float32\[16, 64\]"),
        ("classes", r"probabilities"),
        ("weight_shape", r"dense_0_kernel"),
        ("weight_name", r"get_weights outputs are"),
    ],
)
def test_manifest_contradicting_signatures_is_a_mismatch(
    plan_copy: Path, change: str, match: str
) -> None:
    manifest = PlanManifest.load(plan_copy / MANIFEST_FILE)
    weights = list(manifest.weights)
    update: dict[str, object] = {}
    if change == "batch":
        update["train_batch_size"] = 16
    elif change == "classes":
        labels = [*manifest.output.class_labels, "extra"]
        update["output"] = manifest.output.model_copy(update={"class_labels": labels})
    elif change == "weight_shape":
        weights[0] = weights[0].model_copy(update={"shape": [64, 32]})
        update["weights"] = weights
    else:
        weights[0] = weights[0].model_copy(update={"name": "renamed"})
        update["weights"] = weights
    with pytest.raises(PlanMismatchError, match=match):
        PlanRuntime.from_bytes((plan_copy / PLAN_FILE).read_bytes(),
                               manifest.model_copy(update=update))


def test_forced_missing_interpreter_is_reported(plan_copy: Path, monkeypatch) -> None:
    import edgefleet.interpreters as interpreters

    monkeypatch.setitem(interpreters._INTERPRETERS, "tflite-runtime",
                        ("edgefleet_no_such_module", ("tflite-runtime",)))
    with pytest.raises(InterpreterUnavailable, match="tflite-runtime"):
        PlanRuntime.from_dir(plan_copy, interpreter="tflite-runtime")
