"""Data sets and client partitions for the experiments.

Uses ``abo_jax.data`` when it provides the loaders; otherwise a small local IDX reader and
scikit-learn's digits, so the experiments run before that module lands.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from abo_jax.data.client_data import ClientData

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "dataset_available",
    "one_class_per_client",
    "dirichlet_partition",
    "pad_clients",
    "FASHION_MNIST_DIR",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("digits", "fashion_mnist", "mnist", "kmnist", "qmnist")
_ENV = {
    "fashion_mnist": "ABO_JAX_FASHION_MNIST_DIR",
    "mnist": "ABO_JAX_MNIST_DIR",
    "kmnist": "ABO_JAX_KMNIST_DIR",
    "qmnist": "ABO_JAX_QMNIST_DIR",
}


class Dataset(NamedTuple):
    """A classification data set, inputs flattened and scaled to [0, 1]."""

    x_train: np.ndarray  # (n, features) float32
    y_train: np.ndarray  # (n,) int32
    x_test: np.ndarray  # (n_test, features) float32
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype, count=int(np.prod(dims)), offset=4 + 4 * ndim)
    return data.reshape(tuple(dims))


def _find(folder: Path, stems: list[str]) -> Path:
    for stem in stems:
        for suffix in ("", ".gz"):
            p = folder / (stem + suffix)
            if p.exists():
                return p
    raise FileNotFoundError(f"none of {stems} (optionally .gz) in {folder}")


def _data_dir(name: str, data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(_ENV.get(name, ""), "")
    if env:
        return Path(env)
    if name == "fashion_mnist":
        return Path(FASHION_MNIST_DIR)
    raise FileNotFoundError(
        f"{name}: pass the folder with its IDX files (--data-dir) or set {_ENV.get(name)}"
    )


def dataset_available(name: str, data_dir: str | None = None) -> bool:
    """True when ``load_dataset(name, data_dir)`` can find its files."""
    if name == "digits":
        return True
    try:
        folder = _data_dir(name, data_dir)
        prefix = "qmnist-" if name == "qmnist" else ""
        _find(folder, [f"{prefix}train-images-idx3-ubyte", "train-images.idx3-ubyte"])
        return True
    except FileNotFoundError:
        return False


def _load_idx_family(name: str, data_dir: str | None) -> Dataset:
    folder = _data_dir(name, data_dir)
    if name == "qmnist":
        xtr = _read_idx(_find(folder, ["qmnist-train-images-idx3-ubyte"]))
        ytr = _read_idx(_find(folder, ["qmnist-train-labels-idx2-int"]))[:, 0]
        xte = _read_idx(_find(folder, ["qmnist-test-images-idx3-ubyte"]))
        yte = _read_idx(_find(folder, ["qmnist-test-labels-idx2-int"]))[:, 0]
    else:
        xtr = _read_idx(_find(folder, ["train-images-idx3-ubyte", "train-images.idx3-ubyte"]))
        ytr = _read_idx(_find(folder, ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"]))
        xte = _read_idx(_find(folder, ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"]))
        yte = _read_idx(_find(folder, ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"]))
    flat = lambda x: x.reshape(x.shape[0], -1).astype(np.float32) / 255.0
    return Dataset(flat(xtr), ytr.astype(np.int32), flat(xte), yte.astype(np.int32), 10)


def _load_digits(test_fraction: float = 0.2) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    # A fixed stratified split: the last `test_fraction` of each class (deterministic, no PRNG).
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[idx[int(round(len(idx) * (1 - test_fraction))) :]] = True
    return Dataset(x[~test], y[~test], x[test], y[test], 10)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads ``digits`` (bundled) or an MNIST-family set from its IDX files.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: folder with the IDX files (default: ``$ABO_JAX_<NAME>_DIR``, and for Fashion-MNIST
        the Debian package folder ``/usr/share/datasets/fashion-mnist``).

    Raises:
      ValueError: unknown name.  FileNotFoundError: files missing (the message says where to look).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
    if name == "digits":
        return _load_digits()
    return _load_idx_family(name, data_dir)


def one_class_per_client(y: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Client ``i`` gets every example of class ``i mod C`` (split evenly when m > C)."""
    classes = np.unique(y)
    groups: list[list[int]] = [[] for _ in range(num_clients)]
    owners = {
        c: [i for i in range(num_clients) if i % len(classes) == j] for j, c in enumerate(classes)
    }
    for c in classes:
        idx = np.flatnonzero(y == c)
        for part, owner in zip(np.array_split(idx, len(owners[c])), owners[c], strict=True):
            groups[owner].extend(part.tolist())
    return [np.asarray(g, dtype=np.int64) for g in groups]


def dirichlet_partition(
    y: np.ndarray, num_clients: int, alpha: float, *, seed: int = 0
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with Dirichlet(alpha) proportions."""
    if alpha <= 0:
        raise ValueError(f"alpha: must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        props = rng.dirichlet(alpha * np.ones(num_clients))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
        for i, part in enumerate(np.split(idx, cuts)):
            groups[i].extend(part.tolist())
    # Every client needs at least one example.
    for i in range(num_clients):
        if not groups[i]:
            donor = int(np.argmax([len(g) for g in groups]))
            groups[i].append(groups[donor].pop())
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]


def pad_clients(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], *, multiple: int = 1
) -> ClientData:
    """Stacks client subsets into one padded :class:`ClientData` (``n_max`` rounded up to
    ``multiple``)."""
    sizes = np.array([len(p) for p in parts], dtype=np.int32)
    if np.any(sizes == 0):
        raise ValueError(f"parts: every client needs at least one example, got sizes {sizes}")
    n_max = int(-(-sizes.max() // multiple) * multiple)
    m = len(parts)
    xs = np.zeros((m, n_max, *x.shape[1:]), x.dtype)
    ys = np.zeros((m, n_max), np.int32)
    mask = np.zeros((m, n_max), bool)
    for i, p in enumerate(parts):
        xs[i, : len(p)] = x[p]
        ys[i, : len(p)] = y[p]
        mask[i, : len(p)] = True
    return ClientData(x=xs, y=ys, mask=mask, sizes=sizes)
