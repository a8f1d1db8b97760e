"""The data sets scikit-learn ships in its wheel, with deterministic stratified splits.

No download ever happens: ``digits`` (1,797 8×8 handwritten digits, 10 classes, pixel values
0–16), ``breast_cancer`` (569 × 30, 2 classes), ``wine`` (178 × 13, 3 classes) and ``iris``
(150 × 4, 3 classes) come from ``sklearn.datasets`` (imported lazily, on first load).

Example
-------
>>> from edgefleet.datasets import load_dataset
>>> ds = load_dataset("digits", seed=0)
>>> ds.x_train.shape, ds.n_classes
((1438, 64), 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "breast_cancer", "wine", "iris")

# How each data set's raw features are scaled inside a plan: ``(x - shift) * scale``.
# Digits are pixels in 0..16 (a fixed, known range); the others are standardised with the
# training split's mean and standard deviation (computed in :func:`suggested_preprocessing`).
_FIXED_SCALE = {"digits": 1.0 / 16.0}
_IMAGE_SHAPE = {"digits": (8, 8, 1)}


@dataclass(frozen=True)
class Dataset:
    """A train/test split of one data set.

    Attributes
    ----------
    name
        The data set's name (one of :data:`DATASETS`).
    x_train, x_test
        Raw features, ``float32`` ``[n, n_features]`` (not scaled: plans scale inside the graph).
    y_train, y_test
        Integer labels, ``int32`` ``[n]``, indices into ``class_labels``.
    feature_names
        One name per feature column.
    class_labels
        One name per class.
    image_shape
        ``(height, width, channels)`` when the features are the pixels of an image, else ``None``.
    seed
        The seed of the split.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    class_labels: list[str]
    image_shape: tuple[int, int, int] | None = None
    seed: int = 0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    def images(self, split: str = "train") -> np.ndarray:
        """The ``split`` ("train" or "test") features reshaped to ``[n, *image_shape]``."""
        if self.image_shape is None:
            raise ValueError(f"data set {self.name!r} is not an image data set")
        x = self.x_train if split == "train" else self.x_test
        return x.reshape(len(x), *self.image_shape)

    def suggested_preprocessing(self) -> tuple[float | list[float], float | list[float]]:
        """``(shift, scale)`` for a plan's in-graph affine preprocessing of this data set."""
        if self.name in _FIXED_SCALE:
            return 0.0, _FIXED_SCALE[self.name]
        mean = self.x_train.mean(axis=0).astype(np.float64)
        std = self.x_train.std(axis=0).astype(np.float64)
        scale = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 1.0)
        return [float(v) for v in mean], [float(v) for v in scale]


def _load_raw(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from sklearn import datasets as skd

    loaders = {
        "digits": skd.load_digits,
        "breast_cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
    }
    bunch = loaders[name]()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    feature_names = [str(f).replace(" ", "_") for f in getattr(bunch, "feature_names", [])]
    if len(feature_names) != x.shape[1]:
        feature_names = [f"f{i}" for i in range(x.shape[1])]
    class_labels = [str(c) for c in bunch.target_names]
    return x, y, feature_names, class_labels


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``(train_idx, test_idx)``, each sorted-shuffled by seed.

    Each class contributes ``round(test_fraction * n_class)`` (at least one when the class has two
    or more members) examples to the test set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(idx.size)]
        n_test = round(test_fraction * idx.size)
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr, te = np.concatenate(train), np.concatenate(test)
    return tr[rng.permutation(tr.size)], te[rng.permutation(te.size)]


def load_dataset(name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load one of :data:`DATASETS` with a deterministic stratified train/test split.

    Parameters
    ----------
    name
        ``"digits"`` (default), ``"breast_cancer"``, ``"wine"`` or ``"iris"``.
    seed
        Seed of the split (same seed, same split, on every machine).
    test_fraction
        Share of each class held out for testing (default 0.2).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    x, y, feature_names, class_labels = _load_raw(name)
    tr, te = stratified_split(y, test_fraction, seed)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x[tr]),
        y_train=np.ascontiguousarray(y[tr]),
        x_test=np.ascontiguousarray(x[te]),
        y_test=np.ascontiguousarray(y[te]),
        feature_names=feature_names,
        class_labels=class_labels,
        image_shape=_IMAGE_SHAPE.get(name),
        seed=seed,
    )
