"""IDX loaders on small files written here (plain, gzipped, corrupted)."""

import gzip
import struct

import numpy as np
import pytest

from abo_jax.data import (
    load_dataset,
    load_idx,
    load_mnist_family,
    mnist_family_directory,
)

# IDX type codes of the format specification (independent of the loader's table).
_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    code = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, array, *, gz=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, rng, gz, dtype):
    a = (
        rng.integers(-100, 100, size=(5, 3, 4))
        if dtype != np.uint8
        else rng.integers(0, 256, size=(5, 3, 4))
    ).astype(dtype)
    path = write(tmp_path / "a-idx3-ubyte", a, gz=gz)
    out = load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_gzip_detected_from_content_not_name(tmp_path, rng):
    a = rng.integers(0, 256, size=(7,)).astype(np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix but gzipped
    path.write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(load_idx(path), a)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_idx(tmp_path / "nope-idx1-ubyte")


@pytest.mark.parametrize(
    "magic", [b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"PK\x03\x04"]
)
def test_wrong_magic(tmp_path, magic):
    good = idx_bytes(np.arange(6, dtype=np.uint8))
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(magic + good[4:])
    with pytest.raises(ValueError, match="magic number"):
        load_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    data = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))[:-7]
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match="truncated"):
        load_idx(path)


@pytest.mark.parametrize("cut", [0, 2, 6, 11])
def test_truncated_header(tmp_path, cut):
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8))[:cut])
    with pytest.raises(ValueError, match="truncated|too short"):
        load_idx(path)


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "t-idx1-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="longer than its header"):
        load_idx(path)


def _family(directory, n_train=12, n_test=5, *, gz=True, seed=0, qmnist=False, label_rows=None):
    """Writes a tiny MNIST-family directory; returns the arrays written."""
    r = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = r.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = r.integers(0, 10, size=(label_rows or n,)).astype(np.uint8)
        ext = ".gz" if gz else ""
        if qmnist:
            table = r.integers(0, 1000, size=(labels.shape[0], 8)).astype(np.int32)
            table[:, 0] = labels
            write(directory / f"qmnist-{split}-images-idx3-ubyte{ext}", images, gz=gz)
            write(directory / f"qmnist-{split}-labels-idx2-int{ext}", table, gz=gz)
        else:
            write(directory / f"{prefix}-images-idx3-ubyte{ext}", images, gz=gz)
            write(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz=gz)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist", "qmnist"])
def test_mnist_family_values(tmp_path, name, gz):
    written = _family(tmp_path, gz=gz, qmnist=name == "qmnist")
    for split in ("train", "test"):
        x, y = load_mnist_family(tmp_path, name=name, split=split)
        images, labels = written[split]
        assert x.dtype == np.float32 and x.shape == images.shape
        assert y.dtype == np.int32 and y.shape == labels.shape
        np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), images)
        assert x.min() >= 0 and x.max() <= 1
        np.testing.assert_array_equal(y, labels)
    xf, _ = load_mnist_family(tmp_path, name=name, split="test", flatten=True)
    assert xf.shape == (5, 784)


def test_count_mismatch(tmp_path):
    _family(tmp_path, label_rows=11)
    with pytest.raises(ValueError, match="12 images .* 11 labels"):
        load_mnist_family(tmp_path, name="mnist", split="train")


def test_label_range_checked(tmp_path):
    _family(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8), gz=True)
    with pytest.raises(ValueError, match="0..9"):
        load_mnist_family(tmp_path, name="mnist", split="test")


def test_images_not_idx3(tmp_path):
    _family(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 784), np.uint8), gz=True)
    with pytest.raises(ValueError, match="rows, cols"):
        load_mnist_family(tmp_path, name="mnist", split="train")


def test_missing_directory_message(tmp_path, monkeypatch):
    for var in ("ABO_JAX_DATA_DIR", "ABO_JAX_FASHION_MNIST_DIR", "ABO_JAX_KMNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(
        FileNotFoundError, match="make fashion-mnist.*apt-get install -y dataset-fashion-mnist"
    ):
        load_mnist_family(tmp_path / "absent", name="fashion_mnist")
    with pytest.raises(FileNotFoundError, match="ABO_JAX_KMNIST_DIR"):
        load_mnist_family(name="kmnist")  # no default directory for KMNIST


def test_missing_label_file(tmp_path):
    _family(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist_family(tmp_path, name="mnist", split="test")


def test_environment_variables(tmp_path, monkeypatch):
    a = _family(tmp_path / "root" / "fashion-mnist", seed=1)
    b = _family(tmp_path / "elsewhere", seed=2)
    monkeypatch.delenv("ABO_JAX_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("ABO_JAX_DATA_DIR", str(tmp_path / "root"))
    assert mnist_family_directory("fashion-mnist") == tmp_path / "root" / "fashion-mnist"
    _, y = load_mnist_family(name="fashion-mnist", split="train")
    np.testing.assert_array_equal(y, a["train"][1])
    # The per-data-set variable wins over ABO_JAX_DATA_DIR; an argument wins over both.
    monkeypatch.setenv("ABO_JAX_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
    _, y = load_mnist_family(name="fashion_mnist", split="train")
    np.testing.assert_array_equal(y, b["train"][1])
    _, y = load_mnist_family(tmp_path / "root" / "fashion-mnist", split="train")
    np.testing.assert_array_equal(y, a["train"][1])


def test_torchvision_layout(tmp_path):
    a = _family(tmp_path / "KMNIST" / "raw", gz=False)
    _, y = load_mnist_family(tmp_path, name="kmnist", split="test")
    np.testing.assert_array_equal(y, a["test"][1])


def test_load_dataset_family(tmp_path):
    a = _family(tmp_path)
    ds = load_dataset("mnist", directory=tmp_path, flatten=True)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (12, 784) and ds.x_test.shape == (5, 784)
    np.testing.assert_array_equal(ds.y_test, a["test"][1])


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown MNIST-family"):
        load_mnist_family(name="emnist")


def test_default_directory_is_the_fallback(tmp_path, monkeypatch):
    from abo_jax.data import MNIST_FAMILY

    a = _family(tmp_path / "debian", seed=5)
    monkeypatch.setitem(MNIST_FAMILY["fashion_mnist"], "default", str(tmp_path / "debian"))
    monkeypatch.delenv("ABO_JAX_FASHION_MNIST_DIR", raising=False)
    monkeypatch.delenv("ABO_JAX_DATA_DIR", raising=False)
    _, y = load_mnist_family(split="test")
    np.testing.assert_array_equal(y, a["test"][1])
    # ABO_JAX_DATA_DIR without a fashion-mnist sub-directory falls back to the default
    monkeypatch.setenv("ABO_JAX_DATA_DIR", str(tmp_path / "empty-root"))
    assert mnist_family_directory("fashion_mnist") == tmp_path / "debian"
    # an explicit directory does not fall back
    with pytest.raises(FileNotFoundError, match="empty-root"):
        load_mnist_family(tmp_path / "empty-root", split="test")
