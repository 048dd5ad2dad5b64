"""Every operator under jit and vmap (over a seed axis), without retracing, zero-weight clients
without influence, and the in-jit ``finite`` flag."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import operator_zoo, products

import abo_jax as aj

M, D, K, R, SEEDS = 3, 6, 5, 2, 3
NAMES = list(operator_zoo(M, R))


def _clients(rng, shares_a, lead=()):
    b = rng.normal(size=(*lead, M, D, R))
    a = rng.normal(size=(*lead, M, R, K))
    if shares_a:
        a[..., :, :, :] = a[..., :1, :, :]
    bias = rng.normal(size=(*lead, M, D))
    return {
        "layer": aj.LoRAFactors(jnp.asarray(b), jnp.asarray(a)),
        "bias": jnp.asarray(bias),
        "frozen": None,
    }


def _weights(rng, lead=()):
    w = rng.uniform(0.2, 1.0, size=(*lead, M))
    return jnp.asarray(w / w.sum(-1, keepdims=True))


def _init(abo, clients, seed):
    return abo.init(clients, key=jax.random.key(seed))


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_retracing_zero_weight_and_finite(name):
    abo, shares_a = operator_zoo(M, R)[name]
    rng = np.random.default_rng(NAMES.index(name))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(clients, weights, state):
        return abo.aggregate(clients, weights, state)

    # Several rounds with fixed shapes: one trace only (assert_max_traces raises otherwise).
    clients = _clients(rng, shares_a)
    state = _init(abo, clients, 0)
    for _ in range(3):
        bc, state, diag = step(_clients(rng, shares_a), _weights(rng), state)
        assert bool(diag["finite"])

    # vmap over a seed axis == a loop of separate calls.
    clients_s, weights_s = _clients(rng, shares_a, (SEEDS,)), _weights(rng, (SEEDS,))
    states_s = jax.vmap(lambda key: abo.init(clients, key=key))(
        jax.random.split(jax.random.key(1), SEEDS)
    )
    out_v = jax.jit(jax.vmap(abo.aggregate))(clients_s, weights_s, states_s)
    for s in range(SEEDS):
        pick = lambda t, s=s: jax.tree.map(lambda x: x[s], t)
        out_s = step(pick(clients_s), weights_s[s], pick(states_s))
        chex.assert_trees_all_close(
            jax.tree.map(_comparable, pick(out_v)),
            jax.tree.map(_comparable, out_s),
            rtol=1e-10,
            atol=1e-12,
        )

    # A zero-weight client does not influence anything the others receive.
    w = np.array(_weights(rng))
    w[0] = 0.0
    w = jnp.asarray(w / w.sum())
    base = _clients(rng, shares_a)
    bc0, st0, dg0 = step(base, w, state)
    bad = jax.tree.map(lambda x: x.at[0].set(1e3 * rng.normal(size=x.shape[1:])), base)
    bc1, st1, dg1 = step(bad, w, state)
    # The declared form: one copy from a global operator, one start per client otherwise.
    assert bc0.factors["layer"].b.ndim == (2 if abo.traits.one_start else 3)
    np.testing.assert_allclose(
        products(bc1.factors["layer"], m=M)[1:],
        products(bc0.factors["layer"], m=M)[1:],
        rtol=1e-9,
        atol=1e-10,
    )
    each = lambda x: np.broadcast_to(x, (M, *x.shape)) if abo.traits.one_start else x
    np.testing.assert_allclose(
        each(bc1.factors["bias"])[1:], each(bc0.factors["bias"])[1:], rtol=1e-12
    )
    chex.assert_trees_all_close(bc1.base_delta, bc0.base_delta, rtol=1e-9, atol=1e-10)
    chex.assert_trees_all_close(jax.tree.map(_comparable, st1), jax.tree.map(_comparable, st0))
    np.testing.assert_array_equal(dg0["bytes_up"][0], 0.0)
    assert dg0["bytes_up"][1] > 0 and dg0["bytes_down"][1] > 0

    # Inside jit, non-finite factors are flagged (no exception can be raised there).
    nan = jax.tree.map(lambda x: x.at[1].set(jnp.nan), base)
    assert not bool(step(nan, w, state)[2]["finite"])


def _comparable(x):
    """Typed PRNG keys to their raw data; SP factors are compared by value here because the same
    inputs go through the same program (vmapped or not)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(x)
    return x
