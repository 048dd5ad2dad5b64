"""Data sets and client partitions for the experiments: thin adapters over :mod:`abo_jax.data`.

The loaders, partitioners and padding are the library's (``abo_jax.load_dataset``,
``one_class_per_client``, ``dirichlet``, ``pad_clients``); this module only fixes the experiments'
conventions (flattened inputs, index lists per client, ``n_max`` rounded up to the batch size).
"""

from __future__ import annotations

import numpy as np

import abo_jax as aj
from abo_jax.data.client_data import ClientData

__all__ = [
    "DATASETS",
    "load_dataset",
    "dataset_available",
    "one_class_per_client",
    "dirichlet_partition",
    "pad_clients",
]

DATASETS = ("digits", "fashion_mnist", "mnist", "kmnist", "qmnist")


def load_dataset(
    name: str, data_dir: str | None = None, normalization: str = "none"
) -> aj.data.Dataset:
    """``abo_jax.load_dataset(name, directory=data_dir, flatten=True, normalization=...)`` with a
    checked name (``normalization``: ``"none"``, ``"paper"`` or ``"standardize"``)."""
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
    return aj.load_dataset(name, directory=data_dir, flatten=True, normalization=normalization)


def dataset_available(name: str, data_dir: str | None = None) -> bool:
    """True when the files of ``name`` can be found (digits is bundled)."""
    if name == "digits":
        return True
    try:
        aj.data.mnist_family_directory(name, data_dir)
    except FileNotFoundError:
        return False
    return True


def one_class_per_client(y: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Per-client index arrays of :func:`abo_jax.one_class_per_client`."""
    return list(aj.one_class_per_client(y, num_clients=num_clients).indices)


def dirichlet_partition(
    y: np.ndarray, num_clients: int, alpha: float, *, seed: int = 0
) -> list[np.ndarray]:
    """Per-client index arrays of :func:`abo_jax.dirichlet` (key from ``seed``)."""
    return list(aj.dirichlet(y, num_clients=num_clients, alpha=alpha, key=seed).indices)


def pad_clients(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], *, multiple: int = 1
) -> ClientData:
    """:func:`abo_jax.pad_clients` over index lists, ``n_max`` rounded up to ``multiple``."""
    partition = aj.data.make_partition(parts, y)
    sizes = np.asarray(partition.sizes)
    if np.any(sizes == 0):
        raise ValueError(f"parts: every client needs at least one example, got sizes {sizes}")
    n_max = int(-(-sizes.max() // multiple) * multiple)
    return aj.pad_clients(x, y, partition, n_max=n_max)
