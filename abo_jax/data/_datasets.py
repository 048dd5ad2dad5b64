"""Data set container and loaders by name (bundled digits, MNIST family from IDX files).

Input normalization is part of a data set's definition: every loader takes ``normalization``,

* ``"none"``: pixels scaled to ``[0, 1]`` (``x / 255``, digits ``x / 16``);
* ``"paper"``: the constants of the loaders of Chen et al. (arXiv:2508.01348), applied after the
  ``[0, 1]`` scaling as torchvision's ``Normalize(mean, std)``: ``(x - 0.5) / 0.5`` (so ``[-1, 1]``)
  for Fashion-MNIST and KMNIST, ``(x - 0.1307) / 0.3081`` for MNIST and QMNIST (MNIST's pixel
  mean and standard deviation); digits is not in the paper and has none;
* ``"standardize"``: ``(x - mean) / std`` with the scalar mean and (population) standard deviation
  of all training pixels, the rule that gives MNIST's 0.1307 / 0.3081, for any data set.

The test split always uses the training split's constants.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from abo_jax.data._idx import MNIST_FAMILY, load_mnist_family

__all__ = [
    "Dataset",
    "load_digits",
    "load_dataset",
    "stratified_split",
    "normalize",
    "normalization_constants",
    "DATASET_NAMES",
    "NORMALIZATIONS",
    "PAPER_NORMALIZATION",
]

DATASET_NAMES = ("digits", *MNIST_FAMILY)
NORMALIZATIONS = ("none", "paper", "standardize")
#: ``(mean, std)`` of the authors' ``Normalize`` per data set, applied to ``[0, 1]`` pixels
#: (Chen et al., arXiv:2508.01348, their Fashion-MNIST/KMNIST and MNIST/QMNIST loaders).
PAPER_NORMALIZATION: dict[str, tuple[float, float]] = {
    "fashion_mnist": (0.5, 0.5),
    "kmnist": (0.5, 0.5),
    "mnist": (0.1307, 0.3081),
    "qmnist": (0.1307, 0.3081),
}


class Dataset(NamedTuple):
    """A labelled train/test data set held in host memory (numpy).

    Attributes:
      x_train: ``(n_train, ...)`` float32 inputs: ``[0, 1]`` pixels, then ``(x - mean) / std``
        with ``normalization = (mean, std)``.
      y_train: ``(n_train,)`` int32 labels in ``0..num_classes - 1``.
      x_test: ``(n_test, ...)`` float32 inputs.
      y_test: ``(n_test,)`` int32 labels.
      num_classes: number of classes.
      name: data set name, e.g. ``"digits"`` or ``"fashion_mnist"``.
      normalization: ``(mean, std)`` applied to the ``[0, 1]`` pixels (``(0, 1)``: none).
    """

    x_train: np.ndarray  # (n_train, ...) float32
    y_train: np.ndarray  # (n_train,) int32
    x_test: np.ndarray  # (n_test, ...) float32
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int
    name: str
    normalization: tuple[float, float] = (0.0, 1.0)  # (mean, std) on [0, 1] pixels

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28)`` or ``(784,)``."""
        return tuple(self.x_train.shape[1:])


def normalization_constants(
    name: str, normalization: str, x_train: np.ndarray
) -> tuple[float, float]:
    """The ``(mean, std)`` that ``normalization`` applies to a data set's ``[0, 1]`` pixels.

    Args:
      name: the data set's name (``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ...).
      normalization: ``"none"``, ``"paper"`` or ``"standardize"`` (see the module docstring).
      x_train: ``(n_train, ...)`` training inputs in ``[0, 1]`` (read by ``"standardize"`` only).

    Returns:
      ``(mean, std)``: ``(0.0, 1.0)`` for ``"none"``; the authors' constants for ``"paper"``; the
      scalar mean and population standard deviation of all training pixels (float64) for
      ``"standardize"``.

    Raises:
      ValueError: an unknown normalization, ``"paper"`` for a data set the paper did not use, or a
        constant training set (``std = 0``) to standardize.

    Example:
      >>> normalization_constants("fashion_mnist", "paper", np.zeros((1, 4)))
      (0.5, 0.5)
    """
    key = name.lower().replace("-", "_")
    if normalization == "none":
        return (0.0, 1.0)
    if normalization == "paper":
        if key not in PAPER_NORMALIZATION:
            raise ValueError(
                f"normalization 'paper': {name!r} is not one of the paper's data sets "
                f"{sorted(PAPER_NORMALIZATION)} and has no authors' constants; use 'standardize' "
                "(its own training mean and std) or 'none'"
            )
        return PAPER_NORMALIZATION[key]
    if normalization == "standardize":
        x = np.asarray(x_train, np.float64)
        mean, std = float(x.mean()), float(x.std())
        if not std > 0:
            raise ValueError(
                f"normalization 'standardize': the training inputs of {name!r} are constant"
            )
        return (mean, std)
    raise ValueError(
        f"normalization: expected one of {list(NORMALIZATIONS)}, got {normalization!r}"
    )


def normalize(ds: Dataset, normalization: str) -> Dataset:
    """``ds`` with its ``[0, 1]`` inputs mapped to ``(x - mean) / std`` (train and test alike).

    The arithmetic is float32, as torchvision's ``Normalize`` on ``ToTensor()`` output: the constants
    are rounded to float32, then ``(x - mean) / std`` elementwise.

    Args:
      ds: a data set with ``ds.normalization == (0.0, 1.0)`` (inputs in ``[0, 1]``).
      normalization: ``"none"``, ``"paper"`` or ``"standardize"``.

    Returns:
      The :class:`Dataset` with ``normalization = (mean, std)`` recorded.

    Raises:
      ValueError: ``ds`` is already normalized, or as :func:`normalization_constants`.
    """
    if tuple(ds.normalization) != (0.0, 1.0):
        raise ValueError(f"normalize: {ds.name!r} is already normalized with {ds.normalization}")
    mean, std = normalization_constants(ds.name, normalization, ds.x_train)
    if (mean, std) == (0.0, 1.0):
        return ds
    m, s = np.float32(mean), np.float32(std)
    return ds._replace(
        x_train=((ds.x_train - m) / s).astype(np.float32),
        x_test=((ds.x_test - m) / s).astype(np.float32),
        normalization=(mean, std),
    )


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


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    flatten: bool = False,
    normalization: str = "none",
) -> Dataset:
    """scikit-learn's bundled handwritten digits (8x8, 1797 examples, 10 classes; no download).

    Pixel values ``0..16`` are scaled to ``[0, 1]``, then normalized (see the module docstring;
    digits has no ``"paper"`` constants). The train/test split is stratified by class and
    deterministic from ``seed`` (default 80/20: 1438 train, 359 test).

    Args:
      seed: seed of the split.
      test_fraction: fraction of each class held out for testing.
      flatten: inputs as ``(n, 64)`` instead of ``(n, 8, 8)``.
      normalization: ``"none"`` or ``"standardize"`` (the training split's mean and std).

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
    return normalize(Dataset(x[train], y[train], x[test], y[test], 10, "digits"), normalization)


def load_dataset(
    name: str,
    *,
    directory: str | os.PathLike | None = None,
    flatten: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
    normalization: str = "none",
) -> Dataset:
    """Loads a data set by name, with its input normalization.

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``), ``"kmnist"``
        or ``"qmnist"``.
      directory: IDX directory for the MNIST family (see :func:`mnist_family_directory` for the
        environment variables and defaults); ignored for digits.
      flatten: flatten each example to a vector.
      seed: train/test split seed (digits only; the MNIST family has fixed splits).
      test_fraction: test fraction (digits only).
      normalization: ``"none"`` (``[0, 1]`` pixels), ``"paper"`` (the authors' constants:
        ``(x - 0.5) / 0.5`` for Fashion-MNIST and KMNIST, ``(x - 0.1307) / 0.3081`` for MNIST and
        QMNIST) or ``"standardize"`` (the training split's pixel mean and std).

    Returns:
      A :class:`Dataset` (``normalization`` records the ``(mean, std)`` applied).

    Example:
      >>> ds = load_dataset("digits", normalization="standardize")
      >>> bool(abs(ds.x_train.mean()) < 1e-5), bool(abs(ds.x_train.std() - 1) < 1e-5)
      (True, True)

    Raises:
      ValueError: unknown name or normalization, or corrupt files.
      FileNotFoundError: IDX files not found (the message says how to get them).
    """
    key = name.lower().replace("-", "_")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization: expected one of {list(NORMALIZATIONS)}, got {normalization!r}"
        )
    if key == "digits":
        return load_digits(
            seed=seed, test_fraction=test_fraction, flatten=flatten, normalization=normalization
        )
    if key in MNIST_FAMILY:
        x_train, y_train = load_mnist_family(directory, name=key, split="train", flatten=flatten)
        x_test, y_test = load_mnist_family(directory, name=key, split="test", flatten=flatten)
        return normalize(Dataset(x_train, y_train, x_test, y_test, 10, key), normalization)
    raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")
