"""Input normalization as part of a data set's definition, against closed forms."""

import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax.data import (
    PAPER_NORMALIZATION,
    load_dataset,
    load_digits,
    make_partition,
    normalization_constants,
    pad_clients,
)


def _family(directory, n_train=12, n_test=5, *, seed=0, qmnist=False):
    """A tiny MNIST-family directory of gzipped IDX files (the format written out here)."""
    r = np.random.default_rng(seed)
    out = {}

    def write(path, a, code):
        header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        path.write_bytes(gzip.compress(header + a.astype(a.dtype.newbyteorder(">")).tobytes()))

    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = r.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        images[0, 0, :2] = (0, 255)  # both ends of the pixel range
        labels = r.integers(0, 10, size=(n,)).astype(np.uint8)
        if qmnist:
            table = np.zeros((n, 8), np.int32)
            table[:, 0] = labels
            write(directory / f"qmnist-{split}-images-idx3-ubyte.gz", images, 0x08)
            write(directory / f"qmnist-{split}-labels-idx2-int.gz", table, 0x0C)
        else:
            write(directory / f"{prefix}-images-idx3-ubyte.gz", images, 0x08)
            write(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08)
        out[split] = (images, labels)
    return out


# The authors' transforms written out (Normalize((0.5,), (0.5,)) / Normalize((0.1307,), (0.3081,))
# after ToTensor()), independent of the loader's table.
AUTHORS = {
    "fashion_mnist": lambda v: (v / 255.0 - 0.5) / 0.5,
    "kmnist": lambda v: (v / 255.0 - 0.5) / 0.5,
    "mnist": lambda v: (v / 255.0 - 0.1307) / 0.3081,
    "qmnist": lambda v: (v / 255.0 - 0.1307) / 0.3081,
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_paper_normalization_is_the_authors_transform(tmp_path, name):
    written = _family(tmp_path, qmnist=name == "qmnist")
    ds = load_dataset(name, directory=tmp_path, normalization="paper")
    assert ds.normalization == PAPER_NORMALIZATION[name]
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        raw = written[split][0].astype(np.float64)
        np.testing.assert_allclose(x, AUTHORS[name](raw), rtol=0, atol=2e-6)
    if name in ("fashion_mnist", "kmnist"):  # pixel 0 -> -1, pixel 255 -> +1
        assert ds.x_train.min() == -1 and ds.x_train.max() == 1


def test_none_keeps_unit_interval_pixels(tmp_path):
    written = _family(tmp_path)
    ds = load_dataset("fashion_mnist", directory=tmp_path, normalization="none")
    assert ds.normalization == (0.0, 1.0)
    np.testing.assert_allclose(ds.x_test, written["test"][0] / 255.0, rtol=0, atol=1e-7)
    assert load_dataset("fashion_mnist", directory=tmp_path).normalization == (0.0, 1.0)


def test_standardize_uses_the_training_splits_mean_and_std(tmp_path):
    written = _family(tmp_path, seed=3)
    train, test = (written[s][0].astype(np.float64) / 255.0 for s in ("train", "test"))
    mean, std = train.mean(), np.sqrt(np.mean((train - train.mean()) ** 2))
    ds = load_dataset("kmnist", directory=tmp_path, normalization="standardize")
    # the loader's statistics are of the float32 pixels (x / 255 rounded): 6e-8 relative each
    np.testing.assert_allclose(ds.normalization, (mean, std), rtol=1e-7)
    np.testing.assert_allclose(ds.x_train, (train - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        ds.x_test, (test - mean) / std, rtol=0, atol=1e-5
    )  # train's constants
    assert abs(ds.x_train.astype(np.float64).mean()) < 1e-5
    assert abs(ds.x_train.astype(np.float64).std() - 1.0) < 1e-5


def test_digits_standardize_and_no_paper_constants():
    raw = load_digits()
    ds = load_digits(normalization="standardize")
    x = raw.x_train.astype(np.float64)
    assert ds.normalization == pytest.approx((x.mean(), x.std()), rel=1e-6)
    np.testing.assert_allclose(ds.x_test, (raw.x_test - x.mean()) / x.std(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, raw.y_train)  # the same split
    with pytest.raises(ValueError, match="standardize"):
        load_dataset("digits", normalization="paper")
    with pytest.raises(ValueError, match="normalization"):
        load_dataset("digits", normalization="minmax")
    with pytest.raises(ValueError, match="constant"):
        normalization_constants("digits", "standardize", np.zeros((3, 4)))


def test_padding_rows_stay_masked_whatever_the_transform():
    # After normalization a zero-filled padding row is no longer a "black" image (it sits at
    # +mean/std); it must still be masked out, so a client's training does not depend on it.
    from abo_jax.models.mlp import paper_mlp
    from abo_jax.simulation import client_update, paper_sgd

    ds = load_digits(normalization="standardize", flatten=True)
    parts = [np.flatnonzero(ds.y_train == c)[:20] for c in range(2)]
    parts[1] = parts[1][:13]  # uneven: client 1 gets 7 padding rows
    partition = make_partition(parts, ds.y_train)
    data = pad_clients(ds.x_train, ds.y_train, partition, n_max=24)
    x, mask = np.asarray(data.x), np.asarray(data.mask)
    np.testing.assert_array_equal(mask.sum(axis=1), [20, 13])
    np.testing.assert_array_equal(x[1, :13], ds.x_train[parts[1]])
    assert not mask[1, 13:].any() and not mask[0, 20:].any()

    model = paper_mlp(64, (16,), 10, ranks=2)
    frozen, trainable = model.init(jax.random.key(0))
    opt = paper_sgd()

    def train(xc):
        out = client_update(
            model,
            opt,
            frozen,
            trainable,
            model.prepare(frozen, jnp.asarray(xc)),
            data.y[1],
            data.mask[1],
            jax.random.key(1),
            local_epochs=2,
            batch_size=8,
        )
        return out.trainable, out.train_loss

    garbage = x[1].copy()
    garbage[13:] = 1e6  # padding rows filled with anything
    (t_zero, l_zero), (t_garbage, l_garbage) = train(x[1]), train(garbage)
    jax.tree.map(np.testing.assert_array_equal, t_zero, t_garbage)
    np.testing.assert_array_equal(l_zero, l_garbage)
