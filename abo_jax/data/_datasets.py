"""Data set container and loaders by name (bundled digits, MNIST family from IDX files)."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from abo_jax.data._idx import MNIST_FAMILY, load_mnist_family

__all__ = ["Dataset", "load_digits", "load_dataset", "stratified_split", "DATASET_NAMES"]

DATASET_NAMES = ("digits", *MNIST_FAMILY)


class Dataset(NamedTuple):
    """A labelled train/test data set held in host memory (numpy).

    Attributes:
      x_train: ``(n_train, ...)`` float32 inputs in ``[0, 1]``.
      y_train: ``(n_train,)`` int32 labels in ``0..num_classes - 1``.
      x_test: ``(n_test, ...)`` float32 inputs.
      y_test: ``(n_test,)`` int32 labels.
      num_classes: number of classes.
      name: data set name, e.g. ``"digits"`` or ``"fashion_mnist"``.
    """

    x_train: np.ndarray  # (n_train, ...) float32
    y_train: np.ndarray  # (n_train,) int32
    x_test: np.ndarray  # (n_test, ...) float32
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28)`` or ``(784,)``."""
        return tuple(self.x_train.shape[1:])


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test index split, deterministic from ``seed``.

    Each class ``c`` with ``n_c`` examples sends ``round(test_fraction * n_c)`` randomly chosen
    examples to the test set.

    Args:
      labels: ``(n,)`` integer labels.
      test_fraction: in ``(0, 1)``.
      seed: seed of the ``numpy.random.Generator``.

    Returns:
      ``(train_idx, test_idx)``, sorted int64 arrays partitioning ``0..n-1``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: int(round(test_fraction * idx.size))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(y.shape[0]), test_idx)
    return train_idx, test_idx


def load_digits(*, seed: int = 0, test_fraction: float = 0.2, flatten: bool = False) -> Dataset:
    """scikit-learn's bundled handwritten digits (8x8, 1797 examples, 10 classes; no download).

    Pixel values ``0..16`` are scaled to ``[0, 1]``. The train/test split is stratified by class and
    deterministic from ``seed`` (default 80/20: 1438 train, 359 test).

    Args:
      seed: seed of the split.
      test_fraction: fraction of each class held out for testing.
      flatten: inputs as ``(n, 64)`` instead of ``(n, 8, 8)``.

    Returns:
      A :class:`Dataset` named ``"digits"``.

    Example:
      >>> ds = load_digits()
      >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
      ((1438, 8, 8), (359, 8, 8), 10)

    References:
      Alpaydin, Kaynak, Optical Recognition of Handwritten Digits, UCI ML Repository (1998).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn (pip install 'abo-jax[data]' or scikit-learn)"
        ) from err
    bunch = sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    if flatten:
        x = x.reshape(x.shape[0], -1)
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset(x[train], y[train], x[test], y[test], 10, "digits")


def load_dataset(
    name: str,
    *,
    directory: str | os.PathLike | None = None,
    flatten: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Loads a data set by name.

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``), ``"kmnist"``
        or ``"qmnist"``.
      directory: IDX directory for the MNIST family (see :func:`mnist_family_directory` for the
        environment variables and defaults); ignored for digits.
      flatten: flatten each example to a vector.
      seed: train/test split seed (digits only; the MNIST family has fixed splits).
      test_fraction: test fraction (digits only).

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown name, or corrupt files.
      FileNotFoundError: IDX files not found (the message says how to get them).
    """
    key = name.lower().replace("-", "_")
    if key == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction, flatten=flatten)
    if key in MNIST_FAMILY:
        x_train, y_train = load_mnist_family(directory, name=key, split="train", flatten=flatten)
        x_test, y_test = load_mnist_family(directory, name=key, split="test", flatten=flatten)
        return Dataset(x_train, y_train, x_test, y_test, 10, key)
    raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")
