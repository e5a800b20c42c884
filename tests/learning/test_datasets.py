"""Built-in data sets load offline with the right shapes; splits are stratified and leak-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.errors import ConfigError, DataError
from fedhive.learning.datasets import DATASET_NAMES, Dataset, load_dataset, split_train_test

EXPECTED = {
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast-cancer": (569, 30, 2),
    "mnist5k": (5000, 784, 10),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_dataset_shapes_and_classes(name: str) -> None:
    rows, features, classes = EXPECTED[name]
    ds = load_dataset(name)
    assert ds.x.shape == (rows, features) and ds.x.dtype == np.float32
    assert ds.y.shape == (rows,) and ds.y.dtype == np.int64
    assert ds.num_classes == classes == len(ds.class_names)
    assert set(np.unique(ds.y).tolist()) == set(range(classes))
    assert len(ds.feature_names) == features


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_images_are_scaled_to_unit_range(name: str) -> None:
    ds = load_dataset(name)
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0


def test_loads_are_independent_copies() -> None:
    first = load_dataset("iris")
    first.x[:] = 99.0  # a caller scribbling on its copy must not change the next load
    assert load_dataset("iris").x.max() < 10.0


def test_unknown_dataset_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown data set 'cifar'") as info:
        load_dataset("cifar")
    for name in DATASET_NAMES:
        assert name in str(info.value)


def test_csv_needs_path_and_label_and_others_refuse_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="label column"):
        load_dataset("csv", csv_path=tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="only apply to data set 'csv'"):
        load_dataset("iris", label="species")


def test_csv_through_load_dataset(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n")
    ds = load_dataset("csv", csv_path=path, label="kind")
    assert ds.x.shape == (3, 2) and ds.class_names == ("x", "y") and ds.standardize


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    ds = load_dataset("digits")
    train, test = split_train_test(ds, test_fraction=0.25, seed=3)
    again_train, again_test = split_train_test(ds, test_fraction=0.25, seed=3)
    assert len(train) + len(test) == len(ds)
    np.testing.assert_array_equal(train.x, again_train.x)
    np.testing.assert_array_equal(test.y, again_test.y)
    # Every class keeps (close to) a quarter of its rows in the test split.
    for cls in range(10):
        share = np.count_nonzero(test.y == cls) / np.count_nonzero(ds.y == cls)
        assert abs(share - 0.25) < 0.01
    other_train, _ = split_train_test(ds, test_fraction=0.25, seed=4)
    assert not np.array_equal(train.y, other_train.y) or not np.array_equal(train.x, other_train.x)


def test_split_keeps_every_row_exactly_once_and_every_class_in_train() -> None:
    # Feature = row number, so the rows of each split can be read back.
    y = np.array([0] * 7 + [1] * 3 + [2] * 1)
    ds = Dataset("rows", np.arange(len(y), dtype=np.float32)[:, None], y, 3, ("row",), ("a", "b", "c"))
    train, test = split_train_test(ds, test_fraction=0.3, seed=1)
    train_rows, test_rows = train.x[:, 0].tolist(), test.x[:, 0].tolist()
    assert sorted(train_rows + test_rows) == list(range(len(y)))
    assert set(train.y.tolist()) == {0, 1, 2}  # the one-row class stays in train


def test_tabular_split_is_standardised_with_train_statistics_only() -> None:
    ds = load_dataset("wine")
    train, test = split_train_test(ds, seed=0)
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)
    # The test split is scaled with the train statistics, so it is NOT exactly centred.
    assert np.abs(test.x.mean(axis=0)).max() > 1e-3
    assert not train.standardize and not test.standardize


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_image_split_is_standardised_with_train_statistics(name: str) -> None:
    train, test = split_train_test(load_dataset(name))
    used = train.x.std(axis=0) > 0  # always-blank pixels stay constant
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.x[:, used].std(axis=0), 1.0, atol=1e-3)
    assert np.isfinite(test.x).all()


def test_constant_column_stays_finite() -> None:
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]], dtype=np.float32)
    ds = Dataset("t", x, np.array([0, 1, 0, 1]), 2, ("a", "b"), ("n", "p"), standardize=True)
    train, test = split_train_test(ds, test_fraction=0.5)
    assert np.isfinite(train.x).all() and np.isfinite(test.x).all()
    assert (train.x[:, 1] == 0.0).all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test fraction"):
        split_train_test(load_dataset("iris"), test_fraction=fraction)


def test_split_refuses_data_too_small_for_a_test_split() -> None:
    ds = Dataset("tiny", np.zeros((2, 1), np.float32), np.array([0, 1]), 2, ("a",), ("n", "p"))
    with pytest.raises(DataError, match="too few"):
        split_train_test(ds)


def test_take_selects_rows() -> None:
    ds = load_dataset("iris")
    part = ds.take(np.array([0, 50, 100]))
    assert part.y.tolist() == [0, 1, 2] and part.x.shape == (3, 4)
