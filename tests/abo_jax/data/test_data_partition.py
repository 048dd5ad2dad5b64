"""Partitioners: coverage, purity, determinism from the key, skew vs alpha, histograms."""

import jax
import numpy as np
import pytest

from abo_jax.data import (
    Partition,
    dirichlet,
    iid,
    make_partition,
    one_class_per_client,
    shards,
)


def labels_fixture(n=600, num_classes=10, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, num_classes, size=n).astype(np.int32)


def check_exact_cover(p: Partition, y: np.ndarray):
    """Every index used exactly once; sizes and histogram agree with the indices (numpy recount)."""
    flat = np.concatenate(p.indices)
    np.testing.assert_array_equal(np.sort(flat), np.arange(y.shape[0]))
    np.testing.assert_array_equal(p.sizes, [len(i) for i in p.indices])
    assert p.sizes.dtype == np.int32
    hist = np.stack([np.bincount(y[i], minlength=p.num_classes) for i in p.indices])
    np.testing.assert_array_equal(p.class_histogram, hist)
    for i in p.indices:
        assert np.all(np.diff(i) > 0)  # sorted, no duplicates


def entropy(hist):
    q = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)


def test_one_class_per_client_paper_setting():
    y = labels_fixture()
    p = one_class_per_client(y)
    check_exact_cover(p, y)
    assert p.num_clients == 10
    for c, idx in enumerate(p.indices):
        np.testing.assert_array_equal(idx, np.flatnonzero(y == c))
    np.testing.assert_array_equal(p.class_histogram, np.diag(np.bincount(y)))


@pytest.mark.parametrize("g", [2, 3])
def test_one_class_per_client_multiple(g):
    y = labels_fixture()
    p = one_class_per_client(y, num_clients=10 * g, key=jax.random.key(3))
    check_exact_cover(p, y)
    counts = np.bincount(y)
    for i, idx in enumerate(p.indices):
        assert np.all(y[idx] == i // g)  # purity, clients g*c .. g*c+g-1 hold class c
    # each class split evenly: sizes within a class differ by at most one
    sizes = p.sizes.reshape(10, g)
    assert np.all(sizes.max(1) - sizes.min(1) <= 1)
    np.testing.assert_array_equal(sizes.sum(1), counts)
    # the key shuffles within a class; a different key gives a different split
    q = one_class_per_client(y, num_clients=10 * g, key=jax.random.key(4))
    assert any(not np.array_equal(a, b) for a, b in zip(p.indices, q.indices, strict=True))


def test_one_class_per_client_errors():
    y = labels_fixture()
    with pytest.raises(ValueError, match="multiple of num_classes"):
        one_class_per_client(y, num_clients=15)
    with pytest.raises(ValueError, match="class 3 has 0 examples"):
        one_class_per_client(np.array([0, 1, 2, 4]), num_classes=5)
    with pytest.raises(ValueError, match="shape"):
        one_class_per_client(np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="integers"):
        one_class_per_client(np.zeros(3))


@pytest.mark.parametrize("s", [1, 2, 3])
def test_shards(s):
    # every class has 60 examples, so a shard (at most 60 consecutive label-sorted examples)
    # spans at most 2 classes
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 60)).astype(np.int32)
    p = shards(y, num_clients=10, num_shards_per_client=s, key=jax.random.key(0))
    check_exact_cover(p, y)
    assert np.all((p.class_histogram > 0).sum(1) <= 2 * s)
    assert p.sizes.max() - p.sizes.min() <= s
    q = shards(y, num_clients=10, num_shards_per_client=s, key=jax.random.key(0))
    for a, b in zip(p.indices, q.indices, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dirichlet_determinism_and_cover():
    y = labels_fixture()
    key = jax.random.key(7)
    p = dirichlet(y, num_clients=8, alpha=0.5, key=key)
    q = dirichlet(y, num_clients=8, alpha=0.5, key=key)
    r = dirichlet(y, num_clients=8, alpha=0.5, key=jax.random.key(8))
    check_exact_cover(p, y)
    for a, b in zip(p.indices, q.indices, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(p.indices, r.indices, strict=True))
    assert p.sizes.min() >= 1
    # an int seed is shorthand for jax.random.key(seed)
    s = dirichlet(y, num_clients=8, alpha=0.5, key=7)
    for a, b in zip(p.indices, s.indices, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dirichlet_skew_responds_to_alpha():
    y = labels_fixture(n=2000)
    mean_entropy = {
        alpha: np.mean(
            [
                entropy(dirichlet(y, num_clients=10, alpha=alpha, key=k).class_histogram).mean()
                for k in range(3)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert mean_entropy[0.1] < mean_entropy[1.0] < mean_entropy[100.0]
    assert mean_entropy[100.0] > 0.95 * np.log(10)  # near uniform label distribution
    assert mean_entropy[0.1] < 0.6 * np.log(10)


def test_dirichlet_min_size_and_errors():
    y = labels_fixture(n=200)
    p = dirichlet(y, num_clients=10, alpha=0.05, key=1, min_size=5)
    check_exact_cover(p, y)
    assert p.sizes.min() >= 5
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(y, num_clients=10, alpha=0.0, key=1)
    with pytest.raises(ValueError, match="no draw"):
        dirichlet(y, num_clients=10, alpha=0.01, key=1, min_size=19, max_tries=3)


def test_iid_near_uniform():
    y = labels_fixture(n=5003)
    p = iid(y, num_clients=7, key=jax.random.key(0))
    check_exact_cover(p, y)
    assert p.sizes.max() - p.sizes.min() <= 1
    # each client's class frequencies are close to the global ones (hypergeometric spread)
    global_freq = np.bincount(y) / y.size
    freq = p.class_histogram / p.sizes[:, None]
    sd = np.sqrt(global_freq * (1 - global_freq) / p.sizes.min())
    assert np.all(np.abs(freq - global_freq) < 5 * sd)
    assert entropy(p.class_histogram).mean() > 0.99 * np.log(10)


def test_make_partition_histogram_and_range():
    y = np.array([0, 2, 2, 1, 0])
    p = make_partition([[4, 0], [1, 2, 3]], y, num_classes=4, scheme="x")
    np.testing.assert_array_equal(p.indices[0], [0, 4])
    np.testing.assert_array_equal(p.class_histogram, [[2, 0, 0, 0], [0, 1, 2, 0]])
    with pytest.raises(ValueError, match="indices must lie"):
        make_partition([[5]], y)
    with pytest.raises(ValueError, match="num_classes=2"):
        make_partition([[0]], y, num_classes=2)


def test_dirichlet_alpha_inf_points_to_iid_and_bad_alphas_are_named():
    from abo_jax.data import iid

    y = np.repeat(np.arange(4), 20)
    with pytest.raises(ValueError, match=r"alpha=inf is the IID limit.*iid\(labels"):
        dirichlet(y, num_clients=4, alpha=np.inf, key=0)
    for bad in (0.0, -1.0, np.nan, -np.inf):
        with pytest.raises(ValueError, match="finite number > 0"):
            dirichlet(y, num_clients=4, alpha=bad, key=0)
    with pytest.raises(TypeError, match="alpha must be a number"):
        dirichlet(y, num_clients=4, alpha="big", key=0)
    # the advised replacements work: iid, and a large finite alpha is close to uniform
    assert iid(y, num_clients=4, key=0).sizes.tolist() == [20] * 4
    hist = dirichlet(y, num_clients=4, alpha=1e4, key=0).class_histogram
    assert np.abs(hist - 5).max() <= 2
