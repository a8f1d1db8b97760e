"""Build plan directories: convert a model, write ``plan.tflite``, ``manifest.json``, weights.

:func:`build_plan` turns any :class:`~authoring.models.PlanModule` plus a description of its data
into a plan directory; :func:`build_dataset_plan` does it for one of the data sets scikit-learn
ships (see :mod:`edgefleet.datasets`), choosing the in-graph preprocessing for it.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from authoring.convert import convert
from authoring.errors import ModelDefinitionError
from authoring.models import MLP, FrozenConvNet, PlanModule
from edgefleet import __version__ as edgefleet_version
from edgefleet.drift import build_reference
from edgefleet.plan import (
    InputSpec,
    OutputSpec,
    PlanManifest,
    Preprocessing,
    WeightSpec,
    save_weights,
    sha256_bytes,
)
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE

Arch = Literal["mlp", "convnet"]


def _preprocessing(module: PlanModule) -> Preprocessing:
    shift, scale = module.shift_values, module.scale_values
    if np.all(shift == 0.0) and np.all(scale == 1.0):
        return Preprocessing()

    def _val(a: np.ndarray) -> float | list[float]:
        return float(a[0]) if a.size == 1 else [float(v) for v in a]

    return Preprocessing(kind="affine", shift=_val(shift), scale=_val(scale))


def _built_with() -> dict[str, str]:
    import sklearn

    return {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "edgefleet": edgefleet_version,
        "scikit-learn": sklearn.__version__,
    }


def build_plan(
    module: PlanModule,
    out_dir: str | Path,
    *,
    name: str,
    feature_names: Sequence[str],
    class_labels: Sequence[str],
    x_reference: np.ndarray | None = None,
    y_reference: np.ndarray | None = None,
    dataset: str | None = None,
) -> PlanManifest:
    """Convert ``module`` and write its plan directory; returns the manifest written.

    Parameters
    ----------
    module
        The model (its current variable values become ``weights.safetensors``).
    out_dir
        Directory to create or overwrite (``plan.tflite``, ``manifest.json``,
        ``weights.safetensors``).
    name
        The model's name, e.g. ``"digits-mlp"``.
    feature_names, class_labels
        One name per feature of the flattened sample, one per class.
    x_reference, y_reference
        Training data whose statistics become the manifest's drift ``reference`` (optional).
    dataset
        Name of the data set it is meant for, recorded as ``architecture["dataset"]``.
    """
    n_flat = int(np.prod(module.sample_shape))
    if len(feature_names) != n_flat:
        raise ModelDefinitionError(f"{len(feature_names)} feature names for {n_flat} features")
    if len(class_labels) != module.n_classes:
        raise ModelDefinitionError(f"{len(class_labels)} class labels for {module.n_classes}")
    plan = convert(module)
    reference = None
    if x_reference is not None and y_reference is not None:
        reference = build_reference(x_reference, y_reference, list(feature_names),
                                    module.n_classes)
    weights = module.weights_numpy()
    architecture = module.architecture()
    if dataset:
        architecture["dataset"] = dataset
    manifest = PlanManifest(
        name=name,
        architecture=architecture,
        input=InputSpec(shape=[None, *module.sample_shape], feature_names=list(feature_names),
                        preprocessing=_preprocessing(module)),
        output=OutputSpec(class_labels=list(class_labels)),
        weights=[WeightSpec(name=k, shape=list(v.shape)) for k, v in weights.items()],
        train_batch_size=module.train_batch_size,
        plan_sha256=sha256_bytes(plan),
        plan_size=len(plan),
        built_with=_built_with(),
        reference=reference,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_bytes(plan)
    manifest.save(out / MANIFEST_FILE)
    save_weights(out / WEIGHTS_FILE, weights, plan_sha256=manifest.plan_sha256)
    return manifest


def make_model(
    arch: Arch,
    *,
    sample_shape: Sequence[int],
    n_classes: int,
    hidden: Sequence[int] = (64,),
    filters: int = 16,
    train_batch_size: int = 32,
    shift: float | Sequence[float] = 0.0,
    scale: float | Sequence[float] = 1.0,
    seed: int = 0,
) -> PlanModule:
    """An :class:`MLP` (``hidden`` layers) or a :class:`FrozenConvNet` (``hidden`` head layers)."""
    if arch == "mlp":
        return MLP(int(np.prod(sample_shape)), n_classes, hidden,
                   train_batch_size=train_batch_size, shift=shift, scale=scale, seed=seed)
    if arch == "convnet":
        return FrozenConvNet(sample_shape, n_classes, filters=filters, head_hidden=hidden,
                             train_batch_size=train_batch_size, shift=shift, scale=scale,
                             seed=seed)
    raise ModelDefinitionError(f"unknown architecture {arch!r}; choose 'mlp' or 'convnet'")


def build_dataset_plan(
    out_dir: str | Path,
    *,
    dataset: str = "digits",
    arch: Arch = "mlp",
    hidden: Sequence[int] = (64,),
    filters: int = 16,
    train_batch_size: int = 32,
    seed: int = 0,
    split_seed: int = 0,
) -> PlanManifest:
    """Build an untrained plan for one of scikit-learn's data sets (reference from its train split).

    ``arch="convnet"`` needs an image data set (``digits``): the plan then takes ``[n, 8, 8, 1]``.
    """
    from edgefleet.datasets import load_dataset

    ds = load_dataset(dataset, seed=split_seed)
    shift, scale = ds.suggested_preprocessing()
    if arch == "convnet":
        if ds.image_shape is None:
            raise ModelDefinitionError(f"data set {dataset!r} has no image shape for a convnet")
        sample_shape: tuple[int, ...] = ds.image_shape
        if not isinstance(shift, float) or not isinstance(scale, float):
            raise ModelDefinitionError("convnet plans need scalar preprocessing")
    else:
        sample_shape = (ds.n_features,)
    model = make_model(arch, sample_shape=sample_shape, n_classes=ds.n_classes, hidden=hidden,
                       filters=filters, train_batch_size=train_batch_size, shift=shift,
                       scale=scale, seed=seed)
    return build_plan(model, out_dir, name=f"{dataset}-{arch}", feature_names=ds.feature_names,
                      class_labels=ds.class_labels, x_reference=ds.x_train,
                      y_reference=ds.y_train, dataset=dataset)
