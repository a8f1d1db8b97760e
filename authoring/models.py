"""Model definitions that convert to TFLite with builtins only and train on the device.

Every model is a :class:`PlanModule`: a ``tf.Module`` whose trainable weights are ``tf.Variable``
objects and which exposes the four plan signatures (see :mod:`edgefleet.plan`):

``infer(x)``            dynamic batch; raw features in, ``probabilities`` out.
``train(x, y, lr)``     one plain-SGD step (``assign_sub``) on a *static* batch; returns ``loss``.
``get_weights()``       every trainable variable by name.
``set_weights(**w)``    assigns every trainable variable; returns ``n_assigned``.

The recipe that keeps the ``train`` signature builtins-only: a static batch,
ReLU through :func:`relu` (a ``tf.custom_gradient`` whose gradient is ``dy * cast(x > 0)``), and
the cross-entropy written by hand (``logits - reduce_logsumexp(logits)`` dotted with
``one_hot(y)``). Preprocessing (an affine rescaling) happens inside the graph, so callers always
pass raw features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from authoring.errors import ModelDefinitionError


@tf.custom_gradient
def relu(x: tf.Tensor) -> Any:
    """ReLU whose gradient (``dy * cast(x > 0)``) lowers to builtins (no ``ReluGrad``)."""

    def grad(dy: tf.Tensor) -> tf.Tensor:
        return dy * tf.cast(x > 0, dy.dtype)

    return tf.maximum(x, 0.0), grad


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier uniform ``[fan_in, fan_out]`` float32 matrix from ``rng``."""
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def _as_float_list(v: float | Sequence[float], n: int) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float32).reshape(-1)
    if arr.size not in (1, n):
        raise ModelDefinitionError(f"preprocessing vector has {arr.size} values, expected 1 or {n}")
    return arr


class PlanModule(tf.Module):
    """Base of every model that becomes a plan.

    Subclasses create their variables with :meth:`add_dense` (or :meth:`add_weight`) in order and
    implement :meth:`logits`. The order of creation is the order of the manifest's weight spec.

    Parameters
    ----------
    sample_shape
        Shape of one raw input sample (without the batch dimension), e.g. ``(64,)``.
    n_classes
        Number of output classes.
    train_batch_size
        Static batch size of the ``train`` signature (default in subclasses: 32).
    shift, scale
        Affine preprocessing ``(x - shift) * scale`` applied inside the graph; scalars or one value
        per feature of the flattened sample (defaults 0 and 1: no preprocessing).
    seed
        Seed of the initial weights.
    """

    def __init__(
        self,
        *,
        sample_shape: Sequence[int],
        n_classes: int,
        train_batch_size: int,
        shift: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.sample_shape = tuple(int(d) for d in sample_shape)
        if not self.sample_shape or min(self.sample_shape) <= 0:
            raise ModelDefinitionError(f"invalid sample shape {self.sample_shape}")
        if n_classes < 2:
            raise ModelDefinitionError(f"need at least 2 classes, got {n_classes}")
        if train_batch_size <= 0:
            raise ModelDefinitionError(f"train_batch_size must be positive, got {train_batch_size}")
        self.n_classes = int(n_classes)
        self.train_batch_size = int(train_batch_size)
        n_flat = int(np.prod(self.sample_shape))
        self.shift_values = _as_float_list(shift, n_flat)
        self.scale_values = _as_float_list(scale, n_flat)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.weight_vars: list[tf.Variable] = []
        self.weight_names: list[str] = []

    # --- building blocks ------------------------------------------------------------------
    def add_weight(self, name: str, value: np.ndarray) -> tf.Variable:
        """Create a trainable variable named ``name`` (an identifier) from ``value``."""
        if not name.isidentifier() or name in self.weight_names:
            raise ModelDefinitionError(f"weight name {name!r} is not a new identifier")
        var = tf.Variable(np.asarray(value, dtype=np.float32), name=name, trainable=True)
        self.weight_vars.append(var)
        self.weight_names.append(name)
        return var

    def add_dense(self, name: str, fan_in: int, fan_out: int) -> tuple[tf.Variable, tf.Variable]:
        """A dense layer's ``{name}_kernel`` (Glorot uniform) and ``{name}_bias`` (zeros)."""
        if fan_in <= 0 or fan_out <= 0:
            raise ModelDefinitionError(f"dense layer {name} has size {fan_in}x{fan_out}")
        kernel = self.add_weight(f"{name}_kernel", glorot_uniform(self.rng, fan_in, fan_out))
        bias = self.add_weight(f"{name}_bias", np.zeros(fan_out, np.float32))
        return kernel, bias

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        """Raw features → model features (``(x - shift) * scale`` on the flattened sample)."""
        shape = self.sample_shape
        shift = tf.constant(self.shift_values.reshape(shape) if self.shift_values.size > 1
                            else self.shift_values[0])
        scale = tf.constant(self.scale_values.reshape(shape) if self.scale_values.size > 1
                            else self.scale_values[0])
        return (x - shift) * scale

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        """Preprocessed ``x`` → logits ``[batch, n_classes]``. Subclasses implement it."""
        raise NotImplementedError

    def architecture(self) -> dict[str, Any]:
        """How the model was defined (recorded in the manifest)."""
        return {"kind": type(self).__name__, "seed": self.seed}

    # --- the four signatures ----------------------------------------------------------------
    def loss(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean cross-entropy of raw ``x`` against integer labels ``y``, written by hand."""
        z = self.logits(self.preprocess(x))
        log_probs = z - tf.reduce_logsumexp(z, axis=1, keepdims=True)
        onehot = tf.one_hot(y, self.n_classes, dtype=tf.float32)
        return -tf.reduce_sum(log_probs * onehot) / float(self.train_batch_size)

    def signatures(self) -> dict[str, Any]:
        """Concrete functions for ``tf.saved_model.save(..., signatures=...)``."""
        x_any = tf.TensorSpec([None, *self.sample_shape], tf.float32, name="x")
        x_train = tf.TensorSpec([self.train_batch_size, *self.sample_shape], tf.float32, name="x")
        y_train = tf.TensorSpec([self.train_batch_size], tf.int32, name="y")
        lr = tf.TensorSpec([], tf.float32, name="lr")
        w_specs = [tf.TensorSpec(v.shape, tf.float32, name=n)
                   for n, v in zip(self.weight_names, self.weight_vars, strict=True)]

        @tf.function(input_signature=[x_any])
        def infer(x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": tf.nn.softmax(self.logits(self.preprocess(x)), axis=-1)}

        @tf.function(input_signature=[x_train, y_train, lr])
        def train(x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
            with tf.GradientTape() as tape:
                loss = self.loss(x, y)
            grads = tape.gradient(loss, self.weight_vars)
            for var, g in zip(self.weight_vars, grads, strict=True):
                var.assign_sub(lr * g)
            return {"loss": loss}

        @tf.function(input_signature=[])
        def get_weights() -> dict[str, tf.Tensor]:
            return {n: tf.identity(v) for n, v in zip(self.weight_names, self.weight_vars,
                                                        strict=True)}

        @tf.function(input_signature=w_specs)
        def set_weights(*values: tf.Tensor) -> dict[str, tf.Tensor]:
            for var, val in zip(self.weight_vars, values, strict=True):
                var.assign(val)
            return {"n_assigned": tf.constant(len(values), tf.int32)}

        # keep the functions tracked so the saved model owns them
        self.infer, self.train = infer, train
        self.get_weights_fn, self.set_weights_fn = get_weights, set_weights
        return {
            "infer": infer.get_concrete_function(),
            "train": train.get_concrete_function(),
            "get_weights": get_weights.get_concrete_function(),
            "set_weights": set_weights.get_concrete_function(),
        }

    def weights_numpy(self) -> dict[str, np.ndarray]:
        """Current weights as numpy arrays, in weight-spec order."""
        return {n: v.numpy() for n, v in zip(self.weight_names, self.weight_vars, strict=True)}


class MLP(PlanModule):
    """A multilayer perceptron for flat features: ``hidden`` ReLU layers, then a linear output.

    Parameters
    ----------
    n_features
        Number of input features.
    n_classes
        Number of classes.
    hidden
        Sizes of the hidden layers (default ``(64,)``; ``()`` gives multinomial logistic
        regression).
    train_batch_size, shift, scale, seed
        See :class:`PlanModule` (defaults 32, 0, 1, 0).
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (64,),
        *,
        train_batch_size: int = 32,
        shift: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(sample_shape=(n_features,), n_classes=n_classes,
                         train_batch_size=train_batch_size, shift=shift, scale=scale, seed=seed,
                         name="mlp")
        self.hidden = [int(h) for h in hidden]
        sizes = [n_features, *self.hidden, n_classes]
        self.layers = [self.add_dense(f"dense_{i}", sizes[i], sizes[i + 1])
                       for i in range(len(sizes) - 1)]

    def activation(self, z: tf.Tensor) -> tf.Tensor:
        """The hidden layers' activation (the builtins-only :func:`relu`)."""
        return relu(z)

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        h = x
        for i, (kernel, bias) in enumerate(self.layers):
            h = tf.matmul(h, kernel) + bias
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def architecture(self) -> dict[str, Any]:
        return {"kind": "mlp", "hidden": [int(h) for h in self.hidden], "activation": "relu",
                "seed": self.seed}


class FrozenConvNet(PlanModule):
    """An image model: a frozen convolutional base and a dense head that trains on the device.

    The base (``conv 3×3 → ReLU → 2×2 max-pool``) has a *constant* kernel (seeded random
    features, or ``base_kernel`` — e.g. taken from a pre-trained network), and its output goes
    through ``tf.stop_gradient``: the base is baked into the plan, is not in the weight spec and
    never changes; only the head's variables (``head_*`` hidden layers and ``out``) train.

    Parameters
    ----------
    image_shape
        ``(height, width, channels)`` of one raw image.
    n_classes
        Number of classes.
    filters
        Number of convolution filters in the base (default 16).
    head_hidden
        Hidden layer sizes of the trainable head (default ``()``: a linear head).
    base_kernel
        Optional ``[3, 3, channels, filters]`` kernel for the base; seeded random otherwise.
    train_batch_size, shift, scale, seed
        See :class:`PlanModule` (defaults 32, 0, 1, 0).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        n_classes: int,
        *,
        filters: int = 16,
        head_hidden: Sequence[int] = (),
        base_kernel: np.ndarray | None = None,
        train_batch_size: int = 32,
        shift: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        seed: int = 0,
    ) -> None:
        if len(image_shape) != 3:
            raise ModelDefinitionError(f"image_shape must be (h, w, c), got {tuple(image_shape)}")
        super().__init__(sample_shape=image_shape, n_classes=n_classes,
                         train_batch_size=train_batch_size, shift=shift, scale=scale, seed=seed,
                         name="frozen_convnet")
        h, w, c = self.sample_shape
        if h < 2 or w < 2:
            raise ModelDefinitionError(f"image too small for 2x2 pooling: {self.sample_shape}")
        if base_kernel is None:
            fan_in = 9 * c
            base_kernel = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (3, 3, c, filters))
        base_kernel = np.asarray(base_kernel, dtype=np.float32)
        if base_kernel.shape[:3] != (3, 3, c):
            raise ModelDefinitionError(f"base_kernel shape {base_kernel.shape} != (3, 3, {c}, f)")
        self.filters = int(base_kernel.shape[3])
        self.base_kernel = base_kernel
        self.head_hidden = [int(k) for k in head_hidden]
        n_base = (h // 2) * (w // 2) * self.filters
        sizes = [n_base, *self.head_hidden, n_classes]
        self.layers = [
            self.add_dense("out" if i == len(sizes) - 2 else f"head_{i}", sizes[i], sizes[i + 1])
            for i in range(len(sizes) - 1)
        ]
        self.n_base_features = n_base

    def base(self, x: tf.Tensor) -> tf.Tensor:
        """The frozen feature extractor; its output carries no gradient."""
        z = tf.nn.conv2d(x, tf.constant(self.base_kernel), strides=1, padding="SAME")
        z = tf.nn.max_pool2d(tf.nn.relu(z), ksize=2, strides=2, padding="VALID")
        return tf.stop_gradient(tf.reshape(z, [-1, self.n_base_features]))

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        h = self.base(x)
        for i, (kernel, bias) in enumerate(self.layers):
            h = tf.matmul(h, kernel) + bias
            if i < len(self.layers) - 1:
                h = relu(h)
        return h

    def architecture(self) -> dict[str, Any]:
        return {"kind": "frozen_convnet", "filters": self.filters, "kernel_size": 3, "pool": 2,
                "head_hidden": [int(h) for h in self.head_hidden], "activation": "relu",
                "seed": self.seed, "frozen_base_sha256": _sha256_array(self.base_kernel)}


def _sha256_array(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
