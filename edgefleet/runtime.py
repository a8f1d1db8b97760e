"""The plan runtime: run a model plan in a TFLite interpreter, without TensorFlow.

:class:`PlanRuntime` loads a plan (see :mod:`edgefleet.plan`) in whichever interpreter is
installed — ``ai-edge-litert`` first, then ``tflite-runtime`` (see :mod:`edgefleet.interpreters`)
— verifies it against its manifest, and predicts, trains, evaluates and moves weights in and out.

Example
-------
>>> rt = PlanRuntime.from_dir("plans/digits-mlp")          # doctest: +SKIP
>>> rt.fit(x_train, y_train, epochs=10, lr=0.05)            # doctest: +SKIP
>>> rt.evaluate(x_test, y_test).accuracy                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.errors import InputError, PlanFormatError, WeightsError
from edgefleet.interpreters import DirectInfer, LoadedPlan, open_plan
from edgefleet.plan import PlanManifest, check_weights, load_weights

PLAN_FILE = "plan.tflite"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
#: ``predict`` runs at most this many rows per interpreter call (bounded memory, stable shapes).
MAX_PREDICT_CHUNK = 1024
_F32 = np.dtype(np.float32)
#: Zeros for :func:`all_finite`'s one-row test (a dot product with zeros is NaN exactly when a
#: value is NaN or infinite, and never overflows).
_ZEROS = np.zeros(4096, dtype=np.float32)
# An infinite value makes that product raise numpy's "invalid value" warning: expected here.
warnings.filterwarnings("ignore", message="invalid value encountered in dot",
                        category=RuntimeWarning, module=__name__)
#: What ``fit`` does with an epoch's last partial batch (see :meth:`PlanRuntime.fit`).
BATCH_RULES = ("wrap", "drop", "short")
#: What a device reports as its update's weight (see :func:`reported_examples`).
WEIGHTINGS = ("local-size", "examples-trained")


@dataclass(frozen=True)
class FitResult:
    """What :meth:`PlanRuntime.fit` did.

    Attributes
    ----------
    epochs
        Epochs completed (fewer than asked when ``should_continue`` stopped it).
    steps
        ``train`` steps run.
    examples
        Rows fed to ``train`` (``steps * train_batch_size``; includes wrapped-around and
        padding rows).
    epoch_losses
        Mean training loss of each completed epoch.
    stopped
        ``True`` when ``should_continue`` returned ``False``.
    partial_loss
        Mean loss of the steps of an epoch interrupted by ``should_continue`` (else ``None``).
    examples_trained
        Distinct examples one epoch trained on: ``n`` for ``wrap`` and ``short``,
        ``floor(n / batch) * batch`` for ``drop`` (what TensorFlow Federated's
        ``ClientWeighting.NUM_EXAMPLES`` counts per epoch).
    """

    epochs: int
    steps: int
    examples: int
    epoch_losses: list[float] = field(default_factory=list)
    stopped: bool = False
    partial_loss: float | None = None
    examples_trained: int = 0

    @property
    def loss(self) -> float:
        """Mean loss of the last epoch, complete or interrupted (``nan`` when no step ran)."""
        if self.partial_loss is not None:
            return self.partial_loss
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy ``loss``, ``accuracy`` and number of examples ``n``."""

    loss: float
    accuracy: float
    n: int


class PlanRuntime:
    """A loaded, verified plan in a TFLite interpreter.

    Use :meth:`from_dir` or :meth:`from_bytes`. Every method is thread-safe: the interpreter is
    not, so calls are serialised by a lock (the server calls a runtime from worker threads).

    Attributes
    ----------
    manifest
        The plan's manifest.
    interpreter_name
        ``"ai-edge-litert"`` or ``"tflite-runtime"``.
    sample_shape
        The manifest input's shape of one example (kept: the manifest computes it each time).

    Notes
    -----
    ``fit`` shuffles the data every epoch. By default (``batch_rule="wrap"``) it runs
    ``ceil(n / train_batch_size)`` steps; the last batch, when partial, is filled by wrapping
    around to the start of that epoch's permutation, so every example is seen at least once per
    epoch and a few twice (a data set smaller than one batch is repeated to fill it).
    ``"drop"`` and ``"short"`` are the other rules (see :meth:`fit`).
    """

    manifest: PlanManifest
    interpreter_name: str
    sample_shape: tuple[int, ...]

    def __init__(self, plan: bytes, manifest: PlanManifest, *, interpreter: str = "auto") -> None:
        self._attach(open_plan(plan, manifest, interpreter), manifest)

    def _attach(self, loaded: LoadedPlan, manifest: PlanManifest) -> None:
        """Take over ``loaded`` (an interpreter whose signatures match ``manifest``)."""
        self.manifest = manifest
        self.interpreter_name = loaded.interpreter_name
        self._interpreter = loaded.interpreter  # keeps the runners' interpreter alive
        self._runners = loaded.runners
        self._lock = threading.RLock()
        self._sample_shape = self.sample_shape = manifest.input.sample_shape
        self._n_flat = int(np.prod(self._sample_shape))
        self._input_name = manifest.input.name
        self._zeros = np.zeros(self._n_flat, dtype=np.float32)  # one row's all_finite
        self._direct = DirectInfer(self._runners["infer"], manifest.input.name,
                                   manifest.output.name)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_bytes(
        cls,
        plan: bytes,
        manifest: PlanManifest,
        weights: Mapping[str, np.ndarray] | None = None,
        *,
        interpreter: str = "auto",
    ) -> PlanRuntime:
        """Verify ``plan`` against ``manifest`` and load it; then set ``weights`` if given.

        Without ``weights`` the plan keeps the weights baked into it at authoring time.
        """
        runtime = cls(bytes(plan), manifest, interpreter=interpreter)
        if weights is not None:
            runtime.set_weights(weights)
        return runtime

    @classmethod
    def from_dir(cls, path: str | Path, *, interpreter: str = "auto") -> PlanRuntime:
        """Load a plan directory (``plan.tflite``, ``manifest.json``, ``weights.safetensors``)."""
        root = Path(path)
        missing = [f for f in (PLAN_FILE, MANIFEST_FILE, WEIGHTS_FILE) if not (root / f).is_file()]
        if missing:
            raise PlanFormatError(f"plan directory {root} lacks {', '.join(missing)}")
        manifest = PlanManifest.load(root / MANIFEST_FILE)
        plan = (root / PLAN_FILE).read_bytes()
        runtime = cls(plan, manifest, interpreter=interpreter)
        runtime.set_weights(load_weights(root / WEIGHTS_FILE, manifest=manifest))
        return runtime

    # --- inference ----------------------------------------------------------------------------
    def _features(self, x: np.ndarray | object) -> np.ndarray:
        """Validate and cast raw features to ``float32 [n, *sample_shape]`` (or InputError)."""
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == np.bool_):
            raise InputError(f"features must be numeric, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise InputError("features must be real numbers, got complex values")
        shape = tuple(arr.shape)
        if shape[1:] != self._sample_shape:
            if arr.ndim == 2 and shape[1] == self._n_flat:  # flat rows for an image plan
                arr = arr.reshape(shape[0], *self._sample_shape)
            else:
                hint = " (add a batch dimension: x[None])" if shape == self._sample_shape else ""
                raise InputError(
                    f"features have shape {list(shape)}, expected [n, "
                    f"{', '.join(map(str, self._sample_shape))}]{hint}"
                )
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise InputError(f"features contain {bad} NaN/inf value(s) (after cast to float32)")
        return out

    def _labels(self, y: np.ndarray | object, n: int) -> np.ndarray:
        arr = np.asarray(y)
        if arr.shape != (n,):
            raise InputError(f"labels have shape {list(arr.shape)}, expected [{n}]")
        integral = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))
        )
        if not integral:
            raise InputError(f"labels must be integers, got dtype {arr.dtype}")
        c = self.manifest.output.n_classes
        if n and (arr.min() < 0 or arr.max() >= c):
            raise InputError(f"labels must be in [0, {c}), got range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float32 [n, n_classes]`` for raw features ``x`` (any ``n``).

        ``x`` is ``[n, *sample_shape]`` (or ``[n, n_features]`` flat rows for an image plan), of
        any real dtype, finite after casting to ``float32``; otherwise :class:`InputError`.
        A ``float32`` C-contiguous ``[n, *sample_shape]`` array of at most
        ``MAX_PREDICT_CHUNK`` rows is passed to the interpreter as it is.
        """
        if (type(x) is np.ndarray and x.dtype is _F32 and x.shape[1:] == self._sample_shape
                and 0 < x.shape[0] <= MAX_PREDICT_CHUNK and x.flags.c_contiguous
                and all_finite(x, self._zeros)):
            infer = self._runners["infer"]
            with self._lock:
                if infer is self._direct.runner:
                    return self._direct(x)
                self._direct.reset()
                return np.asarray(infer(**{self._input_name: x})[self.manifest.output.name])
        feats = self._features(x)
        n = feats.shape[0]
        out = np.empty((n, self.manifest.output.n_classes), dtype=np.float32)
        infer = self._runners["infer"]
        name = self.manifest.input.name
        with self._lock:
            for start in range(0, n, MAX_PREDICT_CHUNK):
                chunk = feats[start : start + MAX_PREDICT_CHUNK]
                if infer is self._direct.runner:
                    out[start : start + len(chunk)] = self._direct(chunk)
                else:
                    self._direct.reset()
                    out[start : start + len(chunk)] = infer(**{name: chunk})[
                        self.manifest.output.name]
        return out

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Mean cross-entropy and accuracy of the plan on ``(x, y)``."""
        probs = self.predict(x)
        n = probs.shape[0]
        if n == 0:
            raise InputError("cannot evaluate on an empty data set")
        labels = self._labels(y, n)
        p_true = np.clip(probs[np.arange(n), labels].astype(np.float64), 1e-12, 1.0)
        accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
        return EvalResult(loss=float(-np.mean(np.log(p_true))), accuracy=accuracy, n=int(n))

    # --- training -----------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on exactly ``train_batch_size`` rows; returns the batch's loss."""
        b = self.manifest.train_batch_size
        feats = self._features(x)
        if feats.shape[0] != b:
            raise InputError(f"train_step takes exactly {b} rows, got {feats.shape[0]}")
        return self._step(feats, self._labels(y, b), self._lr(lr))

    @staticmethod
    def _lr(lr: float) -> np.ndarray:
        if not isinstance(lr, int | float | np.floating | np.integer) or not (
            math.isfinite(float(lr)) and float(lr) >= 0
        ):
            raise InputError(f"learning rate must be a finite number >= 0, got {lr!r}")
        return np.asarray(lr, dtype=np.float32)

    def _step(self, x: np.ndarray, y: np.ndarray, lr: np.ndarray) -> float:
        with self._lock:
            out = self._runners["train"](**{self.manifest.input.name: x, "y": y, "lr": lr})
        return float(out["loss"])

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        lr: float = 0.05,
        seed: int = 0,
        should_continue: Callable[[], bool] | None = None,
        batch_rule: str = "wrap",
        orders: Sequence[np.ndarray] | None = None,
    ) -> FitResult:
        """Train for ``epochs`` epochs of mini-batches (see the class notes).

        ``batch_rule`` says what happens to an epoch's last partial batch (:data:`BATCH_RULES`):
        ``"wrap"`` fills it from the start of the epoch's order, ``"drop"`` leaves it out (as
        ``tf.data``'s ``drop_remainder=True``), ``"short"`` trains it as a smaller batch (padded
        rows get an out-of-range label, which the plan's one-hot loss ignores, and the step's
        learning rate is scaled by ``batch / rows`` so the update is the short batch's mean).
        ``orders`` replaces the seeded shuffle: one index array per epoch (a permutation of a
        subset of ``range(n)``, used as given). ``should_continue`` is asked before every step;
        when it returns ``False`` training stops after the current step (``stopped=True``).
        """
        if epochs < 0:
            raise InputError(f"epochs must be >= 0, got {epochs}")
        if batch_rule not in BATCH_RULES:
            raise InputError(f"batch_rule must be one of {BATCH_RULES}, got {batch_rule!r}")
        feats = self._features(x)
        n = feats.shape[0]
        if n == 0:
            raise InputError("cannot fit on an empty data set")
        labels = self._labels(y, n)
        lr_arr = self._lr(lr)
        rng = np.random.default_rng(seed)
        steps = 0
        losses: list[float] = []
        trained = 0
        for e in range(epochs):
            order = rng.permutation(n) if orders is None else _given_order(orders, e, n)
            batches = _batches(order, self.manifest.train_batch_size, batch_rule)
            trained = sum(len(b) for b in batches) if batch_rule != "wrap" else len(order)
            epoch_loss = 0.0
            for s, idx in enumerate(batches):
                if should_continue is not None and not should_continue():
                    partial = epoch_loss / s if s else None
                    return FitResult(len(losses), steps, steps * self.manifest.train_batch_size,
                                     losses, stopped=True, partial_loss=partial,
                                     examples_trained=trained)
                epoch_loss += self._batch_step(feats, labels, idx, lr_arr)
                steps += 1
            losses.append(epoch_loss / len(batches) if batches else float("nan"))
        return FitResult(len(losses), steps, steps * self.manifest.train_batch_size, losses,
                         stopped=False, examples_trained=trained if epochs else 0)

    def _batch_step(self, feats: np.ndarray, labels: np.ndarray, idx: np.ndarray,
                    lr: np.ndarray) -> float:
        """One ``train`` call on rows ``idx``; fewer rows than the batch: a short batch."""
        b = self.manifest.train_batch_size
        m = len(idx)
        if m == b:
            return self._step(feats[idx], labels[idx], lr)
        x = np.empty((b, *feats.shape[1:]), dtype=np.float32)
        x[:m] = feats[idx]
        x[m:] = feats[idx[0]]
        y = np.full(b, self.manifest.output.n_classes, dtype=np.int32)  # ignored by the loss
        y[:m] = labels[idx]
        scale = np.float32(b / m)
        return self._step(x, y, np.asarray(lr * scale, dtype=np.float32)) * float(scale)

    # --- weights ------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """Every trainable weight by name (copies, in weight-spec order)."""
        with self._lock:
            out = self._runners["get_weights"]()
        return {w.name: np.array(out[w.name], dtype=w.dtype, copy=True)
                for w in self.manifest.weights}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace every trainable weight; :class:`WeightsError` on wrong names/shapes/dtypes.

        All weights must be given (a partial update is refused) and finite; nothing changes
        when they are refused.
        """
        check_weights(self.manifest.weights, weights)
        bad = [k for k, v in weights.items() if not np.all(np.isfinite(v))]
        if bad:
            raise WeightsError(f"weights contain NaN/inf values: {sorted(bad)}")
        values = {k: np.ascontiguousarray(weights[k]) for k in self.manifest.weight_names()}
        with self._lock:
            self._runners["set_weights"](**values)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"PlanRuntime({m.name!r}, sha256={m.plan_sha256[:12]}…, "
                f"interpreter={self.interpreter_name!r}, params={m.n_parameters})")


def all_finite(a: np.ndarray, zeros: np.ndarray | None = None) -> bool:
    """Whether every value of the float array ``a`` is finite (a one-row ``float32`` array by a
    dot product with zeros, cheaper than ``isfinite`` for a few values; ``zeros``, when given,
    are ``float32`` zeros of the size one row usually has)."""
    if a.dtype is _F32 and a.ndim and a.shape[0] == 1:
        if zeros is not None and a.size == zeros.size:
            return math.isfinite(a.reshape(-1).dot(zeros))
        if a.size <= _ZEROS.size:
            return math.isfinite(a.reshape(-1).dot(_ZEROS[: a.size]))
    return bool(np.isfinite(a).all())


def _given_order(orders: Sequence[np.ndarray], epoch: int, n: int) -> np.ndarray:
    if epoch >= len(orders):
        raise InputError(f"orders has {len(orders)} epochs, fit needs epoch {epoch}")
    order = np.asarray(orders[epoch])
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer) or (
            order.size and (order.min() < 0 or order.max() >= n)):
        raise InputError(f"orders[{epoch}] must be integer indices in [0, {n})")
    return order.astype(np.int64)


def _batches(order: np.ndarray, b: int, rule: str) -> list[np.ndarray]:
    """The epoch's batches of row indices under ``rule`` (see :meth:`PlanRuntime.fit`)."""
    n = len(order)
    if rule == "wrap":
        steps = math.ceil(n / b)
        full = np.resize(order, steps * b)  # wrap around to fill the last batch
        return [full[s * b:(s + 1) * b] for s in range(steps)]
    cut = n // b * b
    out = [order[s:s + b] for s in range(0, cut, b)]
    if rule == "short" and cut < n:
        out.append(order[cut:])
    return out


def order_seed(seed: int, server_round: int, device: int) -> int:
    """The seed of a device's example order in a round: distinct per (run seed, round, device).

    Two devices of the same round (even with equally many examples) shuffle differently, and a
    device shuffles differently every round.
    """
    seq = np.random.SeedSequence([abs(int(seed)), abs(int(server_round)), abs(int(device))])
    return int(seq.generate_state(1, np.uint64)[0])


def reported_examples(result: FitResult, n: int, weighting: str) -> int:
    """The ``num-examples`` a device reports: ``n`` (``local-size``) or the examples trained.

    Either is capped by the rows actually fed to ``train``, so a training stopped early reports
    what it trained.
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "local-size":
        return int(min(n, result.examples))
    return int(min(n, result.examples_trained, result.examples))
