"""Global and personalized operators against NumPy closed forms (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import (
    SHAPES,
    as_tree,
    cached,
    draw_clients,
    draw_weights,
    jitted,
    ps,
    starts,
    svd_truncate,
    zbar,
)

import abo_jax as aj

# Each shape once, zero-weight clients on alternate shapes (the m = 1 case cannot have them).
CASES = [(shape, i % 2 == 1) for i, shape in enumerate(SHAPES)] + [(SHAPES[2], True)]


def _setup(shape, zero, seed=0):
    rng = np.random.default_rng(seed + 17 * sum(shape) + zero)
    m, d, k, r = shape
    b, a = draw_clients(rng, m, d, k, r)
    p = draw_weights(rng, m, zero=zero)
    return rng, b, a, p


@pytest.mark.parametrize("shape,zero", CASES)
def test_sum_product_is_svd_truncation_of_zbar(shape, zero):
    _, b, a, p = _setup(shape, zero)
    m, d, k, r = shape
    for rank in sorted({1, r}):
        bc, _, diag = cached(aj.sum_product, rank=rank)(as_tree(b, a), jnp.asarray(p))
        f = starts(bc.factors["layer"], len(p))
        expected, tail = svd_truncate(zbar(b, a, p), rank)
        for i in range(m):  # compare by products: SVD signs and rotations are arbitrary
            np.testing.assert_allclose(f.b[i] @ f.a[i], expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(diag["sp_tail"], [tail], rtol=1e-8, atol=1e-10)
        assert f.b.shape == (m, d, r) and f.a.shape == (m, r, k)
        # Ranks above `rank` are zero padding.
        np.testing.assert_array_equal(f.b[:, :, rank:], 0.0)


@pytest.mark.parametrize("shape,zero", CASES)
def test_product_sum_averages_factors(shape, zero):
    _, b, a, p = _setup(shape, zero)
    bc, _, _ = cached(aj.product_sum)(as_tree(b, a), jnp.asarray(p))
    bbar, abar = ps(b, a, p)
    f = starts(bc.factors["layer"], len(p))
    np.testing.assert_allclose(f.b, np.broadcast_to(bbar, f.b.shape), rtol=1e-12)
    np.testing.assert_allclose(f.a, np.broadcast_to(abar, f.a.shape), rtol=1e-12)


@pytest.mark.parametrize("shape,zero", CASES)
def test_fedex_residual_is_exact_and_not_transposed(shape, zero):
    rng, b, a, p = _setup(shape, zero)
    m, d, k, r = shape
    s = 0.75
    w0 = rng.normal(size=(d, k))
    bc, _, diag = jitted(aj.fedex(scale=s))(as_tree(b, a), jnp.asarray(p))
    bbar, abar = ps(b, a, p)
    delta = np.asarray(bc.base_delta["layer"])
    assert delta.shape == (d, k)
    np.testing.assert_allclose(delta, s * (zbar(b, a, p) - bbar @ abar), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(diag["residual_norm"], [np.linalg.norm(delta)], rtol=1e-12)
    f = starts(bc.factors["layer"], len(p))
    for i in range(m):
        merged = w0 + delta + s * np.asarray(f.b[i] @ f.a[i])
        np.testing.assert_allclose(merged, w0 + s * zbar(b, a, p), rtol=1e-10, atol=1e-12)
    if d == k and m > 1:
        # The check above can fail: a transposed residual (the published square-layer bug) differs.
        assert not np.allclose(
            w0 + delta.T + s * np.asarray(f.b[0] @ f.a[0]), w0 + s * zbar(b, a, p)
        )


def test_fedex_square_layer_merged_through_a_flax_kernel():
    """A square ``in_out`` kernel: add_delta_tree transposes once, the merged model is FedAvg's."""
    rng = np.random.default_rng(3)
    m, d, r, s = 3, 5, 2, 2.0
    b, a = draw_clients(rng, m, d, d, r)
    p = draw_weights(rng, m)
    kernel = rng.normal(size=(d, d))  # (k, d) flax layout
    bc, _, _ = jitted(aj.fedex(scale=s))(as_tree(b, a), jnp.asarray(p))
    params = aj.lora.add_delta_tree({"layer": jnp.asarray(kernel)}, bc.base_delta)
    f0 = bc.factors["layer"]  # one copy: what every client receives
    merged = aj.lora.merge_lora_tree(params, {"layer": f0}, s)["layer"]
    x = rng.normal(size=(4, d))
    np.testing.assert_allclose(
        x @ merged, x @ kernel + s * x @ zbar(b, a, p).T, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("shape,zero", CASES[:4])
def test_flora_merges_exact_sum_and_restarts(shape, zero):
    _, b, a, p = _setup(shape, zero)
    m, d, k, r = shape
    s = 2.0
    abo = aj.flora(scale=s)
    state = abo.init(as_tree(b, a), key=jax.random.key(5))
    agg = jitted(abo)
    bc, state1, diag = agg(as_tree(b, a), jnp.asarray(p), state)
    np.testing.assert_allclose(bc.base_delta["layer"], s * zbar(b, a, p), rtol=1e-10, atol=1e-12)
    f = starts(bc.factors["layer"], len(p))
    np.testing.assert_array_equal(f.b, 0.0)
    assert np.all(np.abs(f.a) <= 1.0 / np.sqrt(k)) and np.std(f.a) > 0
    np.testing.assert_array_equal(f.a, np.broadcast_to(f.a[0], f.a.shape))  # one global restart
    np.testing.assert_array_equal(diag["bytes_down"], (p > 0) * (p > 0).sum() * r * (d + k) * 8)
    # Keys travel in the state: the next restart differs, and the same key reproduces it.
    bc2, _, _ = agg(as_tree(b, a), jnp.asarray(p), state1)
    assert not np.allclose(bc2.factors["layer"].a, f.a)
    bc_again, _, _ = agg(as_tree(b, a), jnp.asarray(p), state)
    np.testing.assert_array_equal(bc_again.factors["layer"].a, f.a[0])


def test_ffa_keeps_shared_a_and_is_exact():
    rng = np.random.default_rng(1)
    m, d, k, r = 4, 7, 5, 2
    b, a = draw_clients(rng, m, d, k, r)
    a[:] = a[0]
    p = draw_weights(rng, m, zero=True)
    abo = aj.ffa()
    bc, state, diag = abo.aggregate(as_tree(b, a), jnp.asarray(p), abo.init(None))
    f = starts(bc.factors["layer"], len(p))
    np.testing.assert_array_equal(f.a, np.broadcast_to(a[0], f.a.shape))
    np.testing.assert_allclose(f.b[0], ps(b, a, p)[0], rtol=1e-12)
    np.testing.assert_allclose(f.b[0] @ f.a[0], zbar(b, a, p), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(diag["bytes_up"], (p > 0) * d * r * 8)
    np.testing.assert_array_equal(diag["a_spread"], [0.0])
    t = aj.aggregation.trainable_factors(state)
    assert bool(t.b) and not bool(t.a)


def test_rolora_alternates_and_is_exact():
    rng = np.random.default_rng(2)
    m, d, k, r = 3, 6, 4, 2
    p = draw_weights(rng, m)
    abo = aj.rolora()
    b, a = draw_clients(rng, m, d, k, r)
    a[:] = a[0]  # round 0 trains B, A shared
    state = abo.init(as_tree(b, a))
    assert bool(aj.aggregation.trainable_factors(state).b) and not bool(
        aj.aggregation.trainable_factors(state).a
    )
    bc, state, diag = abo.aggregate(as_tree(b, a), jnp.asarray(p), state)
    f = starts(bc.factors["layer"], len(p))
    np.testing.assert_allclose(f.b[1], ps(b, a, p)[0], rtol=1e-12)
    np.testing.assert_array_equal(f.a[1], a[0])
    np.testing.assert_allclose(f.b[0] @ f.a[0], zbar(b, a, p), rtol=1e-10)
    assert not bool(diag["trained_a"])
    np.testing.assert_array_equal(diag["bytes_up"], d * r * 8)
    # Round 1 trains A with B shared.
    assert int(state.round) == 1 and bool(aj.aggregation.rolora_trainable(state).a)
    b2 = np.broadcast_to(np.asarray(f.b[0]), (m, d, r)).copy()
    a2 = rng.normal(size=(m, r, k))
    bc, state, diag = abo.aggregate(as_tree(b2, a2), jnp.asarray(p), state)
    f = starts(bc.factors["layer"], len(p))
    np.testing.assert_allclose(f.a[2], ps(b2, a2, p)[1], rtol=1e-12)
    np.testing.assert_array_equal(f.b[2], b2[0])
    np.testing.assert_allclose(f.b[0] @ f.a[0], zbar(b2, a2, p), rtol=1e-10)
    assert bool(diag["trained_a"])
    np.testing.assert_array_equal(diag["bytes_up"], r * k * 8)
    assert int(state.round) == 2 and bool(aj.aggregation.rolora_trainable(state).b)


def test_freeze_factors_zeroes_the_frozen_factor():
    upd = {"l": aj.LoRAFactors(jnp.ones((2, 3, 1)), jnp.ones((2, 1, 4))), "bias": jnp.ones(3)}
    out = aj.aggregation.freeze_factors(
        upd, aj.aggregation.rolora_trainable(aj.aggregation.RoLoRAState(round=jnp.array(1)))
    )
    np.testing.assert_array_equal(out["l"].b, 0.0)
    np.testing.assert_array_equal(out["l"].a, 1.0)
    np.testing.assert_array_equal(out["bias"], 1.0)
    both = aj.aggregation.trainable_factors(aj.aggregation.EmptyState())
    assert bool(both.a) and bool(both.b)


@pytest.mark.parametrize("shape,zero", CASES[1:4])
def test_fedsa_shares_a_keeps_personal_b(shape, zero):
    _, b, a, p = _setup(shape, zero)
    m, d, k, r = shape
    bc, _, diag = cached(aj.fedsa)(as_tree(b, a), jnp.asarray(p))
    f = bc.factors["layer"]
    np.testing.assert_array_equal(f.b, b)
    np.testing.assert_allclose(f.a, np.broadcast_to(ps(b, a, p)[1], a.shape), rtol=1e-12)
    np.testing.assert_array_equal(diag["bytes_up"], (p > 0) * r * k * 8)


def test_dense_leaves_are_averaged():
    rng = np.random.default_rng(4)
    b, a = draw_clients(rng, 3, 5, 4, 2)
    bias = rng.normal(size=(3, 5))
    p = draw_weights(rng, 3)
    tree = as_tree(b, a, bias=jnp.asarray(bias), frozen=None)
    bc, _, diag = cached(aj.product_sum)(tree, jnp.asarray(p))
    np.testing.assert_allclose(bc.factors["bias"], p @ bias, rtol=1e-12)  # one copy, (5,)
    assert bc.factors["frozen"] is None
    np.testing.assert_array_equal(diag["bytes_up"], 2 * (5 + 4) * 8 + 5 * 8)


def test_fedavg_full_and_merged_helpers():
    rng = np.random.default_rng(6)
    m, d, k, r, s = 4, 6, 5, 2, 0.5
    b, a = draw_clients(rng, m, d, k, r)
    p = draw_weights(rng, m, zero=True)
    w0 = rng.normal(size=(d, k))
    dense = rng.normal(size=(m, 3, 2))
    bc, _, diag = cached(aj.fedavg_full)({"w": jnp.asarray(dense)}, jnp.asarray(p))
    assert bc.factors["w"].shape == (3, 2)  # one copy
    np.testing.assert_allclose(bc.factors["w"], np.einsum("c,cij->ij", p, dense))
    np.testing.assert_array_equal(diag["bytes_up"], (p > 0) * 6 * 8)
    # FedAvg of the merged weights W0 + s B_i A_i is W0 + s Zbar.
    base = {"layer": jnp.asarray(w0)}
    merged = aj.aggregation.merge_clients(base, as_tree(b, a), s)
    bc, _, _ = cached(aj.fedavg_full)(merged, jnp.asarray(p))
    np.testing.assert_allclose(bc.factors["layer"], w0 + s * zbar(b, a, p), rtol=1e-10)
    # The gap to FedAvg: 0 for FedEx-LoRA, s sqrt(tail) for SP.
    clients = as_tree(b, a)
    gap = aj.aggregation.fedavg_gap(
        base, clients, jnp.asarray(p), jitted(aj.fedex(scale=s))(clients, jnp.asarray(p))[0], s
    )
    np.testing.assert_allclose(gap, 0.0, atol=1e-10)
    flora = aj.flora(scale=s, init="gaussian")
    bc_fl, _, _ = jitted(flora)(clients, jnp.asarray(p), flora.init(None, key=jax.random.key(0)))
    np.testing.assert_allclose(
        aj.aggregation.fedavg_gap(base, clients, jnp.asarray(p), bc_fl, s), 0.0, atol=1e-10
    )
    shared = as_tree(b, np.broadcast_to(a[1], a.shape))
    bc_ffa, _, _ = jitted(aj.ffa())(shared, jnp.asarray(p), aj.aggregation.FFAState())
    np.testing.assert_allclose(
        aj.aggregation.fedavg_gap(base, shared, jnp.asarray(p), bc_ffa, s), 0.0, atol=1e-10
    )
    # ... while PS misses FedAvg by its aggregation error (so the gap can be nonzero).
    bc_ps, _, _ = cached(aj.product_sum)(clients, jnp.asarray(p))
    bbar, abar = ps(b, a, p)
    gap = aj.aggregation.fedavg_gap(base, clients, jnp.asarray(p), bc_ps, s)
    np.testing.assert_allclose(gap[0], s * np.linalg.norm(bbar @ abar - zbar(b, a, p)), rtol=1e-9)
    bc_sp, _, diag = cached(aj.sum_product, rank=1)(clients, jnp.asarray(p))
    gap = aj.aggregation.fedavg_gap(base, clients, jnp.asarray(p), bc_sp, s)
    np.testing.assert_allclose(gap, np.full((1, m), s * np.sqrt(diag["sp_tail"][0])), rtol=1e-8)
    with pytest.raises(ValueError, match="clients"):
        cached(aj.fedavg_full)(clients, jnp.asarray(p))


def test_rolora_under_jit_with_a_state_closed_over():
    # The state is concrete but the trained-factor flag derived from it is staged under jit: the
    # concrete-only check of the frozen factor must not convert it to a Python bool.
    clients = {"w": aj.LoRAFactors(jnp.ones((3, 4, 2)), jnp.ones((3, 2, 5)))}
    abo = aj.rolora()
    state = abo.init(clients)
    jitted, _, _ = jax.jit(lambda c, w: abo.aggregate(c, w, state))(clients, jnp.full((3,), 1 / 3))
    eager, _, _ = abo.aggregate(clients, jnp.full((3,), 1 / 3), state)
    jax.tree.map(np.testing.assert_allclose, jitted.factors, eager.factors)
