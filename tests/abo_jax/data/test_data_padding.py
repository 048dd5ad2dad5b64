"""Padding with masks, client weights, and masked per-client epochs."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from abo_jax.data import (
    ClientData,
    client_weights,
    dirichlet,
    epoch_batches,
    make_partition,
    num_batches,
    pad_clients,
)


def small_data(n=200, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 3, 2)).astype(np.float32)
    y = r.integers(0, 5, size=n).astype(np.int32)
    return x, y


def test_pad_clients_matches_gather():
    x, y = small_data()
    p = dirichlet(y, num_clients=6, alpha=0.3, key=0)
    data = pad_clients(x, y, p)
    assert isinstance(data, ClientData)
    assert data.x.dtype == jnp.float32 and data.y.dtype == jnp.int32
    assert data.mask.dtype == jnp.bool_ and data.sizes.dtype == jnp.int32
    data = ClientData(*(np.asarray(a) for a in data))
    n_max = int(p.sizes.max())
    assert data.x.shape == (6, n_max, 3, 2)
    assert data.y.shape == data.mask.shape == (6, n_max)
    np.testing.assert_array_equal(data.sizes, p.sizes)
    for i, idx in enumerate(p.indices):
        n = idx.size
        np.testing.assert_array_equal(data.x[i, :n], x[idx])
        np.testing.assert_array_equal(data.y[i, :n], y[idx])
        assert np.all(data.mask[i, :n]) and not np.any(data.mask[i, n:])
        assert np.all(data.x[i, n:] == 0) and np.all(data.y[i, n:] == 0)


def test_pad_clients_n_max_and_empty_client():
    x, y = small_data(n=10)
    p = make_partition([[0, 1, 2], [], [3, 9]], y, num_classes=5)
    data = pad_clients(x, y, p, n_max=8)
    assert data.x.shape == (3, 8, 3, 2)
    np.testing.assert_array_equal(data.mask.sum(axis=1), [3, 0, 2])
    np.testing.assert_array_equal(data.x[2, :2], x[[3, 9]])
    with pytest.raises(ValueError, match="n_max=2"):
        pad_clients(x, y, p, n_max=2)
    with pytest.raises(ValueError, match="same n"):
        pad_clients(x[:5], y, p)


def test_client_weights():
    sizes = np.array([3, 0, 5, 12])
    p = client_weights(sizes)
    np.testing.assert_allclose(p, sizes / sizes.sum(), rtol=1e-15)
    np.testing.assert_allclose(jnp.sum(p), 1.0, rtol=1e-15)
    assert client_weights(sizes, jnp.float32).dtype == jnp.float32
    # usable inside jit (validation is skipped on tracers)
    np.testing.assert_allclose(jax.jit(client_weights)(sizes), p, rtol=1e-15)
    with pytest.raises(ValueError, match="zero"):
        client_weights(np.zeros(3, int))
    with pytest.raises(ValueError, match=">= 0"):
        client_weights(np.array([2, -1]))


@pytest.mark.parametrize("batch_size", [1, 4, 7, 16])
def test_epoch_batches_one_client(batch_size):
    n_max, n_real = 13, 9
    r = np.random.default_rng(1)
    mask = np.zeros(n_max, bool)
    mask[r.choice(n_max, n_real, replace=False)] = True  # real rows need not come first
    idx, valid = epoch_batches(jax.random.key(0), jnp.asarray(mask), batch_size)
    nb = -(-n_max // batch_size)
    assert idx.shape == valid.shape == (nb, batch_size) and nb == num_batches(n_max, batch_size)
    assert idx.dtype == jnp.int32 and valid.dtype == jnp.bool_
    idx, valid = np.asarray(idx).ravel(), np.asarray(valid).ravel()
    # each real row exactly once among the valid slots; valid slots are exactly the real rows
    np.testing.assert_array_equal(np.sort(idx[valid]), np.flatnonzero(mask))
    assert np.all(mask[idx] | ~valid)
    # real rows come first: the valid slots are a prefix
    np.testing.assert_array_equal(valid, np.arange(nb * batch_size) < n_real)
    assert np.all((idx >= 0) & (idx < n_max))


def test_epoch_batches_shuffles_and_is_deterministic():
    mask = jnp.arange(50) < 40
    a = epoch_batches(jax.random.key(0), mask, 8)
    b = epoch_batches(jax.random.key(0), mask, 8)
    c = epoch_batches(jax.random.key(1), mask, 8)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(np.asarray(a[0]).ravel()[:40], np.arange(40))  # shuffled


def test_epoch_batches_vmap_over_clients():
    x, y = small_data(n=90)
    p = dirichlet(y, num_clients=5, alpha=0.5, key=2)
    data = pad_clients(x, y, p)
    keys = jax.random.split(jax.random.key(3), 5)

    @functools.partial(jax.jit, static_argnames="batch_size")
    @chex.assert_max_traces(n=1)
    def all_clients(keys, mask, batch_size):
        return jax.vmap(epoch_batches, in_axes=(0, 0, None))(keys, mask, batch_size)

    idx, valid = all_clients(keys, data.mask, batch_size=6)
    nb = -(-data.mask.shape[1] // 6)
    assert idx.shape == valid.shape == (5, nb, 6)
    # equals the single-client call with that client's key (two clients checked)
    for i in (0, 4):
        one = epoch_batches(keys[i], data.mask[i], 6)
        np.testing.assert_array_equal(idx[i], one[0])
        np.testing.assert_array_equal(valid[i], one[1])
    idx, valid = np.asarray(idx), np.asarray(valid)
    for i in range(5):
        # each real example once; trailing batches of small clients fully masked
        np.testing.assert_array_equal(np.sort(idx[i][valid[i]]), np.arange(p.sizes[i]))
        real_batches = -(-int(p.sizes[i]) // 6)
        assert np.all(valid[i].any(axis=1) == (np.arange(nb) < real_batches))
    # a new epoch (new keys) with the same shapes does not retrace
    all_clients(jax.random.split(jax.random.key(4), 5), data.mask, batch_size=6)


def test_epoch_batches_errors():
    with pytest.raises(ValueError, match="one client"):
        epoch_batches(jax.random.key(0), jnp.ones((2, 3), bool), 2)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(jax.random.key(0), jnp.ones(3, bool), 0)


@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_pad_clients_property(sizes, extra, seed):
    """Any disjoint index sets (empty clients included) round-trip through the padded layout."""
    assume(sum(sizes) > 0)
    r = np.random.default_rng(seed)
    n = sum(sizes) + extra
    x = r.normal(size=(n, 2))
    y = r.integers(0, 3, size=n)
    perm = r.permutation(n)
    parts = np.split(perm[: sum(sizes)], np.cumsum(sizes)[:-1])
    p = make_partition(parts, y, num_classes=3)
    data = ClientData(*(np.asarray(a) for a in pad_clients(x, y, p)))
    np.testing.assert_array_equal(data.sizes, sizes)
    np.testing.assert_array_equal(data.mask.sum(1), sizes)
    # rows of client i, in order, are x[sorted(parts[i])]; the padding is zero
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(data.x[i][data.mask[i]], x[np.sort(part)])
        np.testing.assert_array_equal(data.y[i][data.mask[i]], y[np.sort(part)])
    assert np.all(data.x[~data.mask] == 0) and np.all(data.y[~data.mask] == 0)
