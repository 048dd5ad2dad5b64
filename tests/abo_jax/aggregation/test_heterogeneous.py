"""HetLoRA, RBLA and FlexLoRA against NumPy closed forms, with the per-client scale convention."""

import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import (
    as_tree,
    cached,
    draw_clients,
    draw_weights,
    het_ranks,
    jitted,
    pad_rank,
    products,
    starts,
    svd_truncate,
)

import abo_jax as aj

# (m, d, k, r_max): d != k, m = 1, r_max = min(d, k), and sum r_i < min(d, k) (stacked FlexLoRA).
SHAPES = [(1, 6, 4, 3), (3, 7, 5, 2), (4, 6, 4, 4), (3, 9, 8, 2)]
CASES = [
    (SHAPES[0], False, 6.0),
    (SHAPES[1], True, None),
    (SHAPES[1], False, 6.0),
    (SHAPES[2], True, 6.0),
    (SHAPES[3], True, None),
    (SHAPES[3], False, 6.0),
]


def _setup(shape, zero, alpha):
    rng = np.random.default_rng(sum(shape) * 7 + 3 * zero + (alpha is not None))
    m, d, k, r = shape
    b, a = draw_clients(rng, m, d, k, r)  # nonzero beyond each rank: the operators must mask
    p = draw_weights(rng, m, zero=zero)
    ranks = het_ranks(m, r)
    scales = np.ones(m) if alpha is None else alpha / ranks
    return b, a, p, ranks, scales


def _check_masked(f, ranks):
    for i, r in enumerate(ranks):
        np.testing.assert_array_equal(np.asarray(f.b)[i, :, r:], 0.0)
        np.testing.assert_array_equal(np.asarray(f.a)[i, r:, :], 0.0)


@pytest.mark.parametrize("shape,zero,alpha", CASES)
def test_hetlora_zero_padding(shape, zero, alpha):
    b, a, p, ranks, scales = _setup(shape, zero, alpha)
    bp, ap = pad_rank(b, a, ranks)
    bbar = sum(p[i] * scales[i] * bp[i] for i in range(len(p)))
    abar = sum(p[i] * ap[i] for i in range(len(p)))
    bc, _, diag = jitted(aj.hetlora(ranks, alpha=alpha))(as_tree(b, a), jnp.asarray(p))
    f = bc.factors["layer"]
    _check_masked(f, ranks)
    for i, r in enumerate(ranks):
        np.testing.assert_allclose(f.a[i, :r], abar[:r], rtol=1e-12)
        np.testing.assert_allclose(scales[i] * np.asarray(f.b[i, :, :r]), bbar[:, :r], rtol=1e-12)
    d, k = shape[1:3]
    np.testing.assert_array_equal(diag["bytes_up"], (p > 0) * ranks * (d + k) * 8)


@pytest.mark.parametrize("shape,zero,alpha", CASES)
def test_rbla_per_component_average(shape, zero, alpha):
    b, a, p, ranks, scales = _setup(shape, zero, alpha)
    m, d, k, r_max = shape
    bbar, abar = np.zeros((d, r_max)), np.zeros((r_max, k))
    coverage = np.zeros(r_max)
    for j in range(r_max):
        holders = [i for i in range(m) if ranks[i] > j]
        coverage[j] = sum(p[i] for i in holders)
        if coverage[j] > 0:
            bbar[:, j] = sum(p[i] * scales[i] * b[i, :, j] for i in holders) / coverage[j]
            abar[j] = sum(p[i] * a[i, j] for i in holders) / coverage[j]
    bc, _, diag = jitted(aj.rbla(ranks, alpha=alpha))(as_tree(b, a), jnp.asarray(p))
    f = bc.factors["layer"]
    _check_masked(f, ranks)
    np.testing.assert_allclose(diag["coverage"], [coverage], rtol=1e-12)
    for i, r in enumerate(ranks):
        np.testing.assert_allclose(f.a[i, :r], abar[:r], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            scales[i] * np.asarray(f.b[i, :, :r]), bbar[:, :r], rtol=1e-12, atol=1e-14
        )


@pytest.mark.parametrize("shape,zero,alpha", CASES)
def test_flexlora_per_client_truncation(shape, zero, alpha):
    b, a, p, ranks, scales = _setup(shape, zero, alpha)
    bp, ap = pad_rank(b, a, ranks)
    z = sum(p[i] * scales[i] * bp[i] @ ap[i] for i in range(len(p)))
    bc, _, diag = jitted(aj.flexlora(ranks, alpha=alpha))(as_tree(b, a), jnp.asarray(p))
    f = bc.factors["layer"]
    _check_masked(f, ranks)
    got = products(f, scales)  # s_i P_i Q_i
    for i, r in enumerate(ranks):
        expected, tail = svd_truncate(z, r)
        np.testing.assert_allclose(got[i], expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(diag["sp_tail"][0, i], tail, rtol=1e-8, atol=1e-10)


def test_equal_ranks_reduce_to_ps_and_sp():
    rng = np.random.default_rng(11)
    m, d, k, r = 3, 7, 5, 2
    b, a = draw_clients(rng, m, d, k, r)
    p = draw_weights(rng, m)
    tree, w = as_tree(b, a), jnp.asarray(p)
    ranks = np.full(m, r)
    ps_f = starts(cached(aj.product_sum)(tree, w)[0].factors["layer"], m)
    for abo in (aj.hetlora(ranks), aj.rbla(ranks)):
        f = jitted(abo)(tree, w)[0].factors["layer"]
        np.testing.assert_allclose(f.b, ps_f.b, rtol=1e-12)
        np.testing.assert_allclose(f.a, ps_f.a, rtol=1e-12)
    sp = products(cached(aj.sum_product)(tree, w)[0].factors["layer"], m=m)
    flex = products(jitted(aj.flexlora(ranks))(tree, w)[0].factors["layer"])
    np.testing.assert_allclose(flex, sp, rtol=1e-10, atol=1e-12)


def test_hetlora_dilutes_rbla_does_not():
    """One rank-2 client among rank-1 clients: component 2 is diluted by HetLoRA, kept by RBLA."""
    b = np.ones((3, 4, 2))
    a = np.ones((3, 2, 3))
    p = np.full(3, 1 / 3)
    ranks = np.array([1, 1, 2])
    het = jitted(aj.hetlora(ranks))(as_tree(b, a), jnp.asarray(p))[0].factors["layer"]
    rb = jitted(aj.rbla(ranks))(as_tree(b, a), jnp.asarray(p))[0].factors["layer"]
    np.testing.assert_allclose(het.b[2, :, 1], 1 / 3)
    np.testing.assert_allclose(rb.b[2, :, 1], 1.0)


def test_per_layer_client_ranks_pytree():
    rng = np.random.default_rng(12)
    m = 3
    b1, a1 = draw_clients(rng, m, 6, 5, 3)
    b2, a2 = draw_clients(rng, m, 4, 6, 2)
    p = draw_weights(rng, m)
    tree = {
        "l1": aj.LoRAFactors(jnp.asarray(b1), jnp.asarray(a1)),
        "l2": aj.LoRAFactors(jnp.asarray(b2), jnp.asarray(a2)),
        "bias": jnp.zeros((m, 4)),
    }
    ranks = {"l1": np.array([1, 2, 3]), "l2": np.array([2, 1, 1]), "bias": None}
    bc, _, diag = jitted(aj.flexlora(ranks))(tree, jnp.asarray(p))
    for name, (b, a) in {"l1": (b1, a1), "l2": (b2, a2)}.items():
        bp, ap = pad_rank(b, a, ranks[name])
        z = sum(p[i] * bp[i] @ ap[i] for i in range(m))
        got = products(bc.factors[name])
        for i, r in enumerate(ranks[name]):
            np.testing.assert_allclose(got[i], svd_truncate(z, r)[0], rtol=1e-10, atol=1e-12)
    assert diag["sp_tail"].shape == (2, m)
    # Per-component diagnostics of layers with different r_max are zero-padded when stacked.
    _, _, diag = jitted(aj.rbla(ranks))(tree, jnp.asarray(p))
    cover = [[1.0, p[1] + p[2], p[2]], [1.0, p[0], 0.0]]
    np.testing.assert_allclose(diag["coverage"], cover, rtol=1e-12)
