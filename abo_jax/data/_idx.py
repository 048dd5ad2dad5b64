"""Readers for the IDX file format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, QMNIST).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the values in C order, big-endian. Files may be gzipped (``.gz``); gzip is detected
from the content, not the name.

Where the data come from:

* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` installs it under
  ``/usr/share/datasets/fashion-mnist/`` (the default here; ``make fashion-mnist`` installs it); else
  https://github.com/zalandoresearch/fashion-mnist.
* MNIST: the four files ``train-images-idx3-ubyte.gz`` ... from the MNIST home page or a mirror.
* KMNIST: the MNIST-format files from https://github.com/rois-codh/kmnist.
* QMNIST: ``qmnist-{train,test}-images-idx3-ubyte.gz`` and ``qmnist-{train,test}-labels-idx2-int.gz``
  from https://github.com/facebookresearch/qmnist (labels are an ``(n, 8)`` int32 table whose column
  0 is the class; the QMNIST test split has 60000 examples, the first 10000 of which are MNIST's).

References:
  LeCun, Bottou, Bengio, Haffner, Gradient-based learning applied to document recognition (1998).
  Xiao, Rasul, Vollgraf, Fashion-MNIST, arXiv:1708.07747.
  Clanuwat et al., Deep Learning for Classical Japanese Literature (KMNIST), arXiv:1812.01718.
  Yadav, Bottou, Cold Case: The Lost MNIST Digits (QMNIST), arXiv:1905.10498.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "load_idx",
    "load_mnist_family",
    "mnist_family_directory",
    "MNIST_FAMILY",
]

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# name -> environment variable, default directory (or None), sub-directory names under
# $ABO_JAX_DATA_DIR (also torchvision's <Name>/raw), and how to get the files.
MNIST_FAMILY: dict[str, dict[str, str | None]] = {
    "mnist": {
        "env": "ABO_JAX_MNIST_DIR",
        "default": None,
        "subdirs": "mnist,MNIST",
        "how": "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from the MNIST home page "
        "(http://yann.lecun.com/exdb/mnist/) or a mirror",
    },
    "fashion_mnist": {
        "env": "ABO_JAX_FASHION_MNIST_DIR",
        "default": FASHION_MNIST_DEFAULT_DIR,
        "subdirs": "fashion-mnist,fashion_mnist,FashionMNIST",
        "how": "run `make fashion-mnist` in the abo-jax checkout (as root: it runs "
        "`apt-get install -y dataset-fashion-mnist`, Debian/Ubuntu, which installs "
        f"{FASHION_MNIST_DEFAULT_DIR}) or download the four IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist",
    },
    "kmnist": {
        "env": "ABO_JAX_KMNIST_DIR",
        "default": None,
        "subdirs": "kmnist,KMNIST",
        "how": "download the MNIST-format IDX files (train-images-idx3-ubyte.gz, ...) from "
        "https://github.com/rois-codh/kmnist",
    },
    "qmnist": {
        "env": "ABO_JAX_QMNIST_DIR",
        "default": None,
        "subdirs": "qmnist,QMNIST",
        "how": "download qmnist-train-images-idx3-ubyte.gz, qmnist-train-labels-idx2-int.gz, "
        "qmnist-test-images-idx3-ubyte.gz and qmnist-test-labels-idx2-int.gz from "
        "https://github.com/facebookresearch/qmnist",
    },
}

_DATA_DIR_ENV = "ABO_JAX_DATA_DIR"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, expected an IDX file") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(
                f"{path} looks gzipped but cannot be decompressed ({err}); the file is truncated "
                "or corrupt: download it again"
            ) from None
    return raw


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) into a numpy array.

    Args:
      path: an ``*-idx{1,2,3}-*`` file, plain or gzipped (detected from the content).

    Returns:
      The array with the shape and element type of the header (``uint8`` for images and MNIST
      labels, ``int32`` for QMNIST's label table), in native byte order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the magic number is wrong, or the file is shorter or longer than its header says.

    Example:
      >>> images = load_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
      >>> images.shape, images.dtype  # doctest: +SKIP
      ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(
            f"{path}: {len(raw)} bytes, too short for an IDX header (4-byte magic number "
            "0x00 0x00 <type> <ndim>); the file is truncated or not an IDX file"
        )
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000TTNN with type TT in "
            f"{{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions "
            "(e.g. 0x00000803 for images, 0x00000801 for labels). Not an IDX file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has "
            f"{len(raw)}; download the file again"
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{path}: {what}: header shape {shape} of {dtype.name} needs {expected} bytes, the "
            f"file has {len(raw)}; download the file again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _normalize_name(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in MNIST_FAMILY:
        raise ValueError(
            f"unknown MNIST-family data set {name!r}; expected one of {sorted(MNIST_FAMILY)}"
        )
    return key


def _candidate_dirs(name: str, directory: str | os.PathLike | None) -> list[Path]:
    info = MNIST_FAMILY[name]
    if directory is not None:
        roots = [Path(directory)]
    elif os.environ.get(str(info["env"])):
        roots = [Path(os.environ[str(info["env"])])]
    else:
        roots = []
        if os.environ.get(_DATA_DIR_ENV):
            base = Path(os.environ[_DATA_DIR_ENV])
            roots += [base / sub for sub in str(info["subdirs"]).split(",")]
        if info["default"] is not None:
            roots.append(Path(str(info["default"])))
    # Also accept torchvision's layout (<root>/<Name>/raw/...) and a plain <root>/raw.
    out = []
    for root in roots:
        out += [root, root / "raw"]
        out += [root / sub / "raw" for sub in str(info["subdirs"]).split(",")]
    return out


def _file_names(name: str, split: str, kind: str) -> list[str]:
    if name == "qmnist":
        qsplit = {"train": "train", "test": "test"}[split]
        stems = [f"qmnist-{qsplit}-images-idx3-ubyte"] if kind == "images" else []
        if kind == "labels":
            stems = [f"qmnist-{qsplit}-labels-idx2-int", f"qmnist-{qsplit}-labels-idx1-ubyte"]
    else:
        prefix = {"train": "train", "test": "t10k"}[split]
        idx = "idx3" if kind == "images" else "idx1"
        # Canonical dash form, plus the dot form some mirrors use (train-images.idx3-ubyte).
        stems = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    return [s + ext for s in stems for ext in (".gz", "")]


def mnist_family_directory(
    name: str = "fashion_mnist", directory: str | os.PathLike | None = None
) -> Path:
    """Finds the directory holding an MNIST-family data set's IDX files.

    Search order: ``directory`` if given; else the per-data-set variable (``ABO_JAX_MNIST_DIR``,
    ``ABO_JAX_FASHION_MNIST_DIR``, ``ABO_JAX_KMNIST_DIR``, ``ABO_JAX_QMNIST_DIR``); else
    ``$ABO_JAX_DATA_DIR/<name>`` (``<name>`` one of e.g. ``fashion-mnist``, ``fashion_mnist``,
    ``FashionMNIST``), then the default (Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist``).
    An explicit ``directory`` or per-data-set variable is searched alone (no fallback).
    Inside each, the files may also sit in ``raw/`` or ``<Name>/raw/`` (torchvision's layout).

    Args:
      name: ``"mnist"``, ``"fashion_mnist"``, ``"kmnist"`` or ``"qmnist"`` (dashes allowed).
      directory: explicit directory (overrides the environment).

    Returns:
      The first candidate directory containing the training images file.

    Raises:
      FileNotFoundError: no candidate holds the files; the message lists where it looked, the file
        names it expected, and how to get them.
    """
    name = _normalize_name(name)
    candidates = _candidate_dirs(name, directory)
    wanted = _file_names(name, "train", "images") + _file_names(name, "test", "images")
    for cand in candidates:
        if any((cand / f).is_file() for f in wanted):
            return cand
    info = MNIST_FAMILY[name]
    looked = ", ".join(str(c) for c in candidates) or "(nowhere: no directory configured)"
    raise FileNotFoundError(
        f"{name}: no IDX files found. Looked in: {looked}. Expected files such as "
        f"{_file_names(name, 'train', 'images')[0]} and {_file_names(name, 'train', 'labels')[0]} "
        f"(plain or .gz). To get them: {info['how']}; then pass directory=..., or set "
        f"{info['env']}=<dir>, or {_DATA_DIR_ENV}=<root> with the files in <root>/"
        f"{str(info['subdirs']).split(',')[0]}/."
    )


def _find_file(directory: Path, name: str, split: str, kind: str) -> Path:
    names = _file_names(name, split, kind)
    for f in names:
        if (directory / f).is_file():
            return directory / f
    raise FileNotFoundError(
        f"{name} {split} {kind}: none of {names} in {directory}. To get them: "
        f"{MNIST_FAMILY[name]['how']}"
    )


def load_mnist_family(
    directory: str | os.PathLike | None = None,
    *,
    name: str = "fashion_mnist",
    split: str = "train",
    flatten: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of MNIST, Fashion-MNIST, KMNIST or QMNIST from IDX files.

    File names: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (MNIST, Fashion-MNIST,
    KMNIST; also ``train-images.idx3-ubyte``) and ``qmnist-{train,test}-images-idx3-ubyte[.gz]`` +
    ``qmnist-{train,test}-labels-idx2-int[.gz]`` (QMNIST; the class is column 0 of the ``(n, 8)``
    label table; an ``idx1`` label file is also accepted). See :func:`mnist_family_directory` for
    where the files are looked for.

    Args:
      directory: directory with the IDX files; ``None`` uses the environment / default.
      name: ``"mnist"``, ``"fashion_mnist"``, ``"kmnist"`` or ``"qmnist"``.
      split: ``"train"`` or ``"test"``.
      flatten: return images as ``(n, 784)`` instead of ``(n, 28, 28)``.

    Returns:
      ``(images, labels)``: float32 ``(n, 28, 28)`` (or ``(n, 784)``) scaled to ``[0, 1]``, and
      int32 ``(n,)`` labels in ``0..9``. :func:`abo_jax.data.load_dataset` applies the input
      normalization (``normalization="paper"`` for the authors' constants).

    Raises:
      FileNotFoundError: the directory or a file is missing (the message says how to get it).
      ValueError: a file is corrupt or truncated, or images and labels disagree.

    Example:
      >>> x, y = load_mnist_family(name="fashion_mnist", split="test")  # doctest: +SKIP
      >>> x.shape, x.dtype, y.shape, y.dtype  # doctest: +SKIP
      ((10000, 28, 28), dtype('float32'), (10000,), dtype('int32'))
    """
    name = _normalize_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    where = mnist_family_directory(name, directory)
    image_path = _find_file(where, name, split, "images")
    label_path = _find_file(where, name, split, "labels")
    images = load_idx(image_path)
    labels = load_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (n, rows, cols), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.ndim == 2 and labels.shape[1] >= 1:
        labels = labels[:, 0]  # QMNIST: (n, 8) table, column 0 is the class
    if labels.ndim != 1:
        raise ValueError(
            f"{label_path}: expected labels of shape (n,) or (n, 8), got {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{name} {split}: {images.shape[0]} images ({image_path.name}) but {labels.shape[0]} "
            f"labels ({label_path.name}); the files come from different releases or one is "
            "truncated"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{label_path}: labels must lie in 0..9, found range [{labels.min()}, {labels.max()}]"
        )
    x = images.astype(np.float32) / np.float32(255.0)
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return x, labels.astype(np.int32)
