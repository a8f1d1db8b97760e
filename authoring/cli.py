"""``edgefleet model``: author, convert, inspect, train and demo model plans.

Only Typer and the standard library are imported here; TensorFlow is imported by ``build`` and
``demo`` alone, and ``inspect``/``train`` run on the device runtime (no TensorFlow).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from edgefleet.runtime import PlanRuntime

app = typer.Typer(no_args_is_help=True)

_ARCHS = ("mlp", "convnet")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_hidden(text: str | None, arch: str) -> tuple[int, ...]:
    if text is None:
        return (64,) if arch == "mlp" else ()
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        _fail(f"--hidden takes comma-separated layer sizes like 64 or 128,64; got {text!r}", 2)
        raise  # unreachable; keeps type checkers content
    return sizes


def _build(out: Path, *, dataset: str, arch: str, hidden: tuple[int, ...], filters: int,
           batch_size: int, seed: int, split_seed: int) -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # quiet; authoring computes nothing big
    from authoring.errors import AuthoringError
    from authoring.plans import build_dataset_plan

    try:
        return build_dataset_plan(out, dataset=dataset, arch=arch,  # type: ignore[arg-type]
                                  hidden=hidden, filters=filters, train_batch_size=batch_size,
                                  seed=seed, split_seed=split_seed)
    except (AuthoringError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def build(
    out: Path = typer.Option(..., "--out", "-o", help="plan directory to write"),
    dataset: str = typer.Option("digits", help="digits | breast_cancer | wine | iris"),
    arch: str = typer.Option("mlp", help="mlp | convnet (frozen conv base, trainable head)"),
    hidden: str | None = typer.Option(
        None, help="hidden layer sizes, e.g. 64 or 128,64 (default: 64 for mlp, none for convnet)"
    ),
    filters: int = typer.Option(16, help="convnet: filters of the frozen 3x3 conv base"),
    batch_size: int = typer.Option(32, help="static batch size of the train signature"),
    seed: int = typer.Option(0, help="seed of the initial weights"),
    split_seed: int = typer.Option(0, help="seed of the train/test split (reference stats)"),
) -> None:
    """Define a model, convert it with TFLite builtins only and write a plan directory."""
    if arch not in _ARCHS:
        _fail(f"--arch must be one of {', '.join(_ARCHS)}, got {arch!r}", 2)
    started = time.perf_counter()
    manifest = _build(out, dataset=dataset, arch=arch, hidden=_parse_hidden(hidden, arch),
                      filters=filters, batch_size=batch_size, seed=seed, split_seed=split_seed)
    typer.echo(f"built {manifest.name} → {out} ({manifest.plan_size:,} bytes, "
               f"{manifest.n_parameters:,} trainable parameters, "
               f"{time.perf_counter() - started:.1f} s)")


def _summary(rt: PlanRuntime, path: Path) -> list[str]:
    m = rt.manifest
    pre = m.input.preprocessing
    prep = "none"
    if pre.kind == "affine":
        prep = f"affine (x - shift) * scale, scale={_short(pre.scale)}"
    lines = [
        f"plan        {path}",
        f"name        {m.name}   format {m.format}   created {m.created_at:%Y-%m-%d %H:%M} UTC",
        f"arch        {m.architecture}",
        f"input       {m.input.name} {m.input.dtype}{m.input.shape}, {m.input.n_features} features "
        f"({', '.join(m.input.feature_names[:3])}, …)",
        f"preprocess  {prep}",
        f"output      {m.output.name} over {m.output.n_classes} classes {m.output.class_labels}",
        f"train       static batch {m.train_batch_size}; signatures {', '.join(m.signatures)}",
        f"plan        {m.plan_size:,} bytes, sha256 {m.plan_sha256}",
        f"built with  {', '.join(f'{k} {v}' for k, v in m.built_with.items())}",
        f"weights     {m.n_parameters:,} parameters:",
    ]
    lines += [f"              {w.name:<18} {w.dtype} {w.shape}" for w in m.weights]
    ref = m.reference
    lines.append(f"reference   {ref.n_samples} training samples, {len(ref.features)} features, "
                 f"class counts {ref.class_counts}" if ref else "reference   none")
    return lines


def _short(v: float | list[float]) -> str:
    if isinstance(v, list):
        return f"[{v[0]:.4g}, … ({len(v)} values)]"
    return f"{v:.4g}"


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="plan directory"),
    interpreter: str = typer.Option("auto", help="auto | litert | tflite-runtime"),
) -> None:
    """Print a plan's manifest summary and run a smoke inference (no TensorFlow)."""
    import numpy as np

    from edgefleet.errors import EdgeFleetError
    from edgefleet.runtime import PlanRuntime

    try:
        rt = PlanRuntime.from_dir(path, interpreter=interpreter)
    except (EdgeFleetError, ValueError) as exc:
        _fail(str(exc))
        return
    for line in _summary(rt, path):
        typer.echo(line)
    m = rt.manifest
    if m.reference is not None:  # a "typical" sample: the training mean of every feature
        x = np.array([[f.mean for f in m.reference.features]], dtype=np.float32)
    else:
        x = np.zeros((1, m.input.n_features), dtype=np.float32)
    probs = rt.predict(x)[0]
    top = int(np.argmax(probs))
    typer.echo(f"smoke       {rt.interpreter_name}: infer(mean sample) → class "
               f"{m.output.class_labels[top]!r} p={probs[top]:.3f}; probabilities sum "
               f"{probs.sum():.4f}")


def _train_loop(rt: PlanRuntime, ds: Any, *, epochs: int, lr: float, seed: int) -> float:
    ev = rt.evaluate(ds.x_test, ds.y_test)
    typer.echo(f"epoch  0  test accuracy {ev.accuracy:.3f}  test loss {ev.loss:.3f}")
    started = time.perf_counter()
    steps = 0
    for epoch in range(1, epochs + 1):
        result = rt.fit(ds.x_train, ds.y_train, epochs=1, lr=lr, seed=seed + epoch)
        steps += result.steps
        ev = rt.evaluate(ds.x_test, ds.y_test)
        typer.echo(f"epoch {epoch:2d}  train loss {result.loss:.3f}  "
                   f"test accuracy {ev.accuracy:.3f}  test loss {ev.loss:.3f}")
    elapsed = time.perf_counter() - started
    typer.echo(f"{steps} train steps of {rt.manifest.train_batch_size} in {elapsed:.2f} s "
               f"on {rt.interpreter_name} ({steps / max(elapsed, 1e-9):,.0f} steps/s, "
               f"incl. evaluation)")
    return ev.accuracy


def _save_weights(rt: PlanRuntime, path: Path) -> None:
    import os

    from edgefleet.plan import save_weights
    from edgefleet.runtime import WEIGHTS_FILE

    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_weights(tmp, rt.get_weights(), plan_sha256=rt.manifest.plan_sha256)
    os.replace(tmp, path / WEIGHTS_FILE)


@app.command()
def train(
    path: Path = typer.Argument(..., help="plan directory (its weights are updated in place)"),
    epochs: int = typer.Option(10, min=1, help="epochs over the training split"),
    lr: float = typer.Option(0.1, help="SGD learning rate"),
    dataset: str | None = typer.Option(None, help="data set (default: the plan's)"),
    seed: int = typer.Option(0, help="shuffling seed"),
    split_seed: int = typer.Option(0, help="seed of the train/test split"),
    interpreter: str = typer.Option("auto", help="auto | litert | tflite-runtime"),
) -> None:
    """Train a plan on the device runtime (no TensorFlow) and write its weights back."""
    from edgefleet.datasets import load_dataset
    from edgefleet.errors import EdgeFleetError
    from edgefleet.runtime import PlanRuntime

    try:
        rt = PlanRuntime.from_dir(path, interpreter=interpreter)
        name = dataset or rt.manifest.architecture.get("dataset")
        if not name:
            _fail("the plan does not record its data set; pass --dataset", 2)
        ds = load_dataset(str(name), seed=split_seed)
        _train_loop(rt, ds, epochs=epochs, lr=lr, seed=seed)
    except (EdgeFleetError, ValueError) as exc:
        _fail(str(exc))
        return
    _save_weights(rt, path)
    typer.echo(f"weights written to {path}")


@app.command()
def demo(
    epochs: int = typer.Option(15, min=1, help="epochs of on-device training"),
    lr: float = typer.Option(0.1, help="SGD learning rate"),
    hidden: str = typer.Option("64", help="hidden layer sizes of the MLP"),
    out: Path | None = typer.Option(None, help="keep the plan here (default: a temp dir)"),
    target: float = typer.Option(0.90, help="exit 1 if the final test accuracy is lower"),
) -> None:
    """Author a digits MLP plan, train it on the device runtime, print its test accuracy."""
    from edgefleet.datasets import load_dataset
    from edgefleet.runtime import PlanRuntime

    with tempfile.TemporaryDirectory(prefix="edgefleet-demo-") as tmp:
        plan_dir = out or Path(tmp) / "digits-mlp"
        typer.echo("1/3 authoring: TensorFlow model → builtins-only TFLite plan")
        manifest = _build(plan_dir, dataset="digits", arch="mlp",
                          hidden=_parse_hidden(hidden, "mlp"), filters=16, batch_size=32, seed=0,
                          split_seed=0)
        typer.echo(f"    {plan_dir}: {manifest.plan_size:,} bytes, {manifest.n_parameters:,} "
                   f"parameters, signatures {', '.join(manifest.signatures)}")
        ds = load_dataset("digits")
        typer.echo(f"2/3 device runtime (TFLite interpreter only): SGD on "
                   f"{len(ds.x_train):,} training images, testing on {len(ds.x_test):,}")
        rt = PlanRuntime.from_dir(plan_dir)
        accuracy = _train_loop(rt, ds, epochs=epochs, lr=lr, seed=0)
        _save_weights(rt, plan_dir)
        verdict = "meets" if accuracy >= target else "MISSES"
        typer.echo(f"3/3 result: test accuracy {accuracy:.3f} ({verdict} the {target:.2f} target)")
        if out is not None:
            typer.echo(f"    plan kept in {out}: try `edgefleet model inspect {out}`")
    if accuracy < target:
        sys.exit(1)
