"""The scikit-learn data sets: shapes, dtypes, deterministic stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.datasets import DATASETS, load_dataset, stratified_split


@pytest.mark.parametrize(
    ("name", "n", "features", "classes"),
    [("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3),
     ("iris", 150, 4, 3)],
)
def test_shapes_and_dtypes(name: str, n: int, features: int, classes: int) -> None:
    ds = load_dataset(name)
    assert ds.x_train.shape[1] == ds.x_test.shape[1] == ds.n_features == features
    assert len(ds.x_train) + len(ds.x_test) == n
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.n_classes == classes and len(ds.feature_names) == features
    assert set(np.unique(ds.y_test)) == set(range(classes))
    assert len(set(ds.feature_names)) == features


def test_split_is_deterministic_and_depends_on_seed() -> None:
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset(
        "digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


def test_split_is_stratified_and_disjoint() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert np.bincount(y[test]).tolist() == [10, 6, 4]
    ds = load_dataset("digits", test_fraction=0.25)
    share = np.bincount(ds.y_test) / (np.bincount(ds.y_test) + np.bincount(ds.y_train))
    assert np.all(np.abs(share - 0.25) < 0.02)


def test_digits_images_and_preprocessing() -> None:
    ds = load_dataset("digits")
    assert ds.images("test").shape == (len(ds.x_test), 8, 8, 1)
    assert ds.x_train.max() == 16.0  # raw pixels: plans scale inside the graph
    assert ds.suggested_preprocessing() == (0.0, 1 / 16)
    wine = load_dataset("wine")
    shift, scale = wine.suggested_preprocessing()
    assert isinstance(shift, list) and isinstance(scale, list)
    z = (wine.x_train - np.asarray(shift)) * np.asarray(scale)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    with pytest.raises(ValueError, match="not an image"):
        wine.images()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("iris", test_fraction=1.0)
    assert "digits" in DATASETS
