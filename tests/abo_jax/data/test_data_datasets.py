"""The bundled digits data set and its stratified split."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from abo_jax.data import Dataset, load_dataset, load_digits, stratified_split


@pytest.fixture(scope="module")
def reference():
    bunch = sk_load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target


def test_digits_split_is_a_stratified_partition(reference):
    images, target = reference
    ds = load_digits(seed=0)
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.input_shape == (8, 8)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    # stratified: each class sends round(0.2 * n_c) examples to the test set
    expected = np.rint(0.2 * np.bincount(target)).astype(int)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), expected)
    # the union of train and test is the reference data set (as a multiset of (image, label) rows)
    ours = np.concatenate([ds.x_train, ds.x_test]).reshape(1797, 64).astype(np.float64)
    labels = np.concatenate([ds.y_train, ds.y_test])
    ref_rows = np.column_stack([images.reshape(1797, 64), target])
    our_rows = np.column_stack([ours, labels])
    np.testing.assert_allclose(
        our_rows[np.lexsort(our_rows.T[::-1])], ref_rows[np.lexsort(ref_rows.T[::-1])], rtol=1e-7
    )


def test_digits_deterministic_from_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


def test_load_dataset_digits_flatten():
    ds = load_dataset("digits", flatten=True, test_fraction=0.5, seed=1)
    assert ds.input_shape == (64,)
    assert abs(ds.x_test.shape[0] - 1797 / 2) <= 10


def test_stratified_split_errors_and_cover():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    train, test = stratified_split(y, 0.4, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(10))
    np.testing.assert_array_equal(np.bincount(y[test], minlength=3), [1, 1, 2])
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(y, 1.0, seed=0)


@pytest.mark.parametrize("module", ["_datasets", "_partition", "_padding"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"abo_jax.data.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
