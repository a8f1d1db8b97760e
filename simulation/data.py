"""An experiment's examples as an :class:`edgefleet.datasets.Dataset` (train/test split).

``sklearn`` data sets come from :func:`edgefleet.datasets.load_dataset`; ``synthetic`` is
``sklearn.datasets.make_classification`` (seeded); ``npz`` and ``csv`` are a user's files. A user
file without its own test split is split with :func:`edgefleet.datasets.stratified_split`, the
same deterministic rule as the bundled data sets. Nothing is ever downloaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgefleet.datasets import Dataset, load_dataset, stratified_split
from simulation.config import DataConfig
from simulation.errors import ConfigError


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """Load ``cfg`` (see :class:`simulation.config.DataConfig`); :class:`ConfigError` if bad."""
    if cfg.source == "sklearn":
        try:
            return load_dataset(cfg.name, seed=seed, test_fraction=cfg.test_fraction)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from exc
    if cfg.source == "synthetic":
        x, y = _synthetic(cfg, seed)
        return _split("synthetic", x, y, None, None, cfg.test_fraction, seed)
    if cfg.source == "npz":
        return _npz(Path(cfg.path), cfg.test_fraction, seed)
    return _csv(Path(cfg.path), cfg.label_column, cfg.test_fraction, seed)


def _synthetic(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=cfg.n_samples, n_features=cfg.n_features, n_informative=cfg.n_informative,
        n_redundant=0, n_classes=cfg.n_classes, n_clusters_per_class=1,
        class_sep=cfg.class_sep, random_state=seed)
    return x.astype(np.float32), y.astype(np.int32)


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)
                           or bool(np.all(np.asarray(y, float) == np.round(y)))):
        raise ConfigError(f"{where}: labels must be a 1-D array of integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ConfigError(f"{where}: labels must be >= 0")
    return y.astype(np.int32)


def _features(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ConfigError(f"{where}: features must be a 2-D numeric array [n, n_features]")
    out = x.astype(np.float32)
    if not np.isfinite(out).all():
        raise ConfigError(f"{where}: features contain NaN or inf")
    return out


def _split(name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None,
           y_test: np.ndarray | None, test_fraction: float, seed: int) -> Dataset:
    if len(x) != len(y):
        raise ConfigError(f"{name}: {len(x)} feature rows but {len(y)} labels")
    if x_test is None or y_test is None:
        tr, te = stratified_split(y, test_fraction, seed)
        x, x_test, y, y_test = x[tr], x[te], y[tr], y[te]
    elif x_test.shape[1] != x.shape[1] or len(x_test) != len(y_test):
        raise ConfigError(f"{name}: the test split does not match the training split's shape")
    n_classes = int(max(y.max(), y_test.max())) + 1
    return Dataset(
        name=name, x_train=np.ascontiguousarray(x), y_train=np.ascontiguousarray(y),
        x_test=np.ascontiguousarray(x_test), y_test=np.ascontiguousarray(y_test),
        feature_names=[f"f{i}" for i in range(x.shape[1])],
        class_labels=[str(c) for c in range(n_classes)], seed=seed)


def _npz(path: Path, test_fraction: float, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data: cannot read {path}: {exc}") from exc
    if "x" not in arrays or "y" not in arrays:
        raise ConfigError(f"data: {path} needs arrays 'x' and 'y' (has {sorted(arrays)})")
    where = str(path)
    x, y = _features(arrays["x"], where), _labels(arrays["y"], where)
    xt = _features(arrays["x_test"], where) if "x_test" in arrays else None
    yt = _labels(arrays["y_test"], where) if "y_test" in arrays else None
    return _split(path.stem, x, y, xt, yt, test_fraction, seed)


def _csv(path: Path, label_column: str, test_fraction: float, seed: int) -> Dataset:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ConfigError(f"data: cannot read {path}: {exc}") from exc
    if len(rows) < 3:
        raise ConfigError(f"data: {path} needs a header row and at least two data rows")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise ConfigError(f"data: {path} has no column {label_column!r} (columns: {header})")
    li = header.index(label_column)
    try:
        table = np.asarray([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"data: {path} has a non-numeric value: {exc}") from exc
    x = _features(np.delete(table, li, axis=1), str(path))
    y = _labels(table[:, li], str(path))
    ds = _split(path.stem, x, y, None, None, test_fraction, seed)
    names = [h for i, h in enumerate(header) if i != li]
    return Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, names,
                   ds.class_labels, seed=seed)
