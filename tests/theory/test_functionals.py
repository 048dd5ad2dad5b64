"""Functionals of theory.functionals against numpy closed forms (dense d x k, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax import Broadcast, LoRAFactors
from theory import functionals as fn


def _clients(rng, m, shapes):
    tree = {}
    for name, (d, k, r) in shapes.items():
        tree[name] = LoRAFactors(
            b=jnp.asarray(rng.normal(size=(m, d, r))), a=jnp.asarray(rng.normal(size=(m, r, k)))
        )
    return tree


def _weights(rng, m):
    w = rng.random(m) + 0.1
    return jnp.asarray(w / w.sum())


def _np_layers(tree):
    return [(np.asarray(tree[n].b), np.asarray(tree[n].a)) for n in sorted(tree)]


# (d, k, r): a layer where dense is cheaper and one where the QR route is taken.
SHAPES = {"small": (3, 4, 2), "tall": (40, 30, 2)}


@pytest.mark.parametrize("stacked", [False, True])
def test_weak_and_strong_mismatch_match_numpy(rng, stacked):
    m = 4
    clients, w = _clients(rng, m, SHAPES), _weights(rng, m)
    bc = _clients(rng, m if stacked else 1, SHAPES)
    if not stacked:
        bc = jax.tree.map(lambda x: x[0], bc)
    pw = np.asarray(w)
    rw, rb, ra = [], [], []
    for (b, a), (p, q) in zip(_np_layers(clients), _np_layers(bc), strict=True):
        p = np.broadcast_to(p, b.shape)
        q = np.broadcast_to(q, a.shape)
        rw.append(sum(pw[i] * np.sum((p[i] @ q[i] - b[i] @ a[i]) ** 2) for i in range(m)))
        rb.append(sum(pw[i] * np.sum((p[i] - b[i]) ** 2) for i in range(m)))
        ra.append(sum(pw[i] * np.sum((q[i] - a[i]) ** 2) for i in range(m)))
    got = fn.weak_mismatch(clients, w, bc)
    np.testing.assert_allclose(got.layers, rw, rtol=1e-10)
    np.testing.assert_allclose(got.total, sum(rw), rtol=1e-10)
    got_b, got_a = fn.strong_mismatch(clients, w, bc)
    np.testing.assert_allclose(got_b.layers, rb, rtol=1e-12)
    np.testing.assert_allclose(got_a.layers, ra, rtol=1e-12)


def test_optima_tail_ps_error_match_numpy(rng):
    m = 3
    clients, w = _clients(rng, m, SHAPES), _weights(rng, m)
    pw = np.asarray(w)
    rw_star, rb_star, ra_star, tails, ps_err = [], [], [], [], []
    for b, a in _np_layers(clients):
        zbar = np.einsum("c,cdr,crk->dk", pw, b, a)
        bbar, abar = np.einsum("c,cdr->dr", pw, b), np.einsum("c,crk->rk", pw, a)
        rw_star.append(sum(pw[i] * np.sum((zbar - b[i] @ a[i]) ** 2) for i in range(m)))
        rb_star.append(sum(pw[i] * np.sum((bbar - b[i]) ** 2) for i in range(m)))
        ra_star.append(sum(pw[i] * np.sum((abar - a[i]) ** 2) for i in range(m)))
        s = np.linalg.svd(zbar, compute_uv=False)
        tails.append(np.sum(s[b.shape[2] :] ** 2))
        ps_err.append(np.sum((zbar - bbar @ abar) ** 2))
    np.testing.assert_allclose(fn.weak_optimum(clients, w).layers, rw_star, rtol=1e-10)
    sb, sa = fn.strong_optimum(clients, w)
    np.testing.assert_allclose(sb.layers, rb_star, rtol=1e-12)
    np.testing.assert_allclose(sa.layers, ra_star, rtol=1e-12)
    np.testing.assert_allclose(fn.sp_tail(clients, w).layers, tails, rtol=1e-9)
    np.testing.assert_allclose(fn.ps_aggregation_error_norm(clients, w).layers, ps_err, rtol=1e-10)
    for e, (b, a) in zip(fn.ps_aggregation_error(clients, w), _np_layers(clients), strict=True):
        zbar = np.einsum("c,cdr,crk->dk", pw, b, a)
        bbar, abar = np.einsum("c,cdr->dr", pw, b), np.einsum("c,crk->rk", pw, a)
        np.testing.assert_allclose(e, zbar - bbar @ abar, rtol=1e-10, atol=1e-12)


def test_base_delta_counts_in_product(rng):
    m, (d, k, r) = 3, SHAPES["small"]
    clients, w = _clients(rng, m, {"small": (d, k, r)}), _weights(rng, m)
    b, a = _np_layers(clients)[0]
    pw = np.asarray(w)
    zbar = np.einsum("c,cdr,crk->dk", pw, b, a)
    p, q = rng.normal(size=(d, r)), rng.normal(size=(r, k))
    scale = 2.0
    delta = scale * (zbar - p @ q)  # exact residual: effective product is Zbar
    bc = Broadcast(
        factors={"small": LoRAFactors(jnp.asarray(p), jnp.asarray(q))},
        base_delta={"small": jnp.asarray(delta)},
    )
    got = fn.weak_mismatch(clients, w, bc, scale=scale)
    np.testing.assert_allclose(got.total, fn.weak_optimum(clients, w).total, rtol=1e-10)
    np.testing.assert_allclose(fn.product_error(clients, w, bc, scale=scale).total, 0, atol=1e-20)
    # the ABO layout: factors stacked per client (m, ...), base_delta (d, k) or (m, d, k)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (m, *x.shape)), bc.factors)
    for dl in (bc.base_delta, {"small": jnp.broadcast_to(jnp.asarray(delta)[None], (m, d, k))}):
        sb = Broadcast(stacked, dl)
        np.testing.assert_allclose(fn.weak_mismatch(clients, w, sb, scale=scale).total, got.total)
        np.testing.assert_allclose(
            fn.product_error(clients, w, sb, scale=scale).total, 0, atol=1e-20
        )
        fn.round_metrics(clients, w, sb, scale=scale)


def test_factor_norms_and_strong_to_weak(rng):
    m = 4
    clients, w = _clients(rng, m, SHAPES), _weights(rng, m)
    w = w.at[1].set(0.0)
    w = w / w.sum()
    big = jax.tree.map(lambda x: x.at[1].multiply(100.0), clients)  # a client outside the round
    c_a, c_b = fn.factor_norms(big, w)
    layers = _np_layers(clients)
    live = [0, 2, 3]
    np.testing.assert_allclose(
        c_a.layers, [max(np.linalg.norm(a[i]) for i in live) for _, a in layers], rtol=1e-12
    )
    np.testing.assert_allclose(
        c_b.total,
        max(np.sqrt(sum(np.sum(b[i] ** 2) for b, _ in layers)) for i in live),
        rtol=1e-12,
    )
    bc = jax.tree.map(lambda x: x[0] + 0.1, clients)
    bound = fn.strong_to_weak_bound(clients, w, bc)
    assert np.all(np.asarray(fn.weak_mismatch(clients, w, bc).layers) <= bound.layers)
    pw = np.asarray(w)
    expected = []
    for (b, a), (p, q) in zip(layers, _np_layers(bc), strict=True):
        expected.append(
            sum(
                pw[i]
                * (
                    np.linalg.norm(p - b[i]) * np.linalg.norm(q, 2)
                    + np.linalg.norm(b[i], 2) * np.linalg.norm(q - a[i])
                )
                ** 2
                for i in range(m)
            )
        )
    np.testing.assert_allclose(bound.layers, expected, rtol=1e-10)


def test_round_metrics_jit_and_vmap(rng):
    m = 3
    clients, w = _clients(rng, m, SHAPES), _weights(rng, m)
    bc = Broadcast(jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), clients), None)
    eager = fn.round_metrics(clients, w, bc)
    jitted = jax.jit(fn.round_metrics)(clients, w, bc)
    for name in fn.ROUND_METRIC_NAMES:
        np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-10)
        assert eager[name + "_layers"].shape == (2,)
    # identities 1 and 5 tie the recorded terms together
    np.testing.assert_allclose(
        eager["weak_mismatch"], eager["weak_optimum"] + eager["product_error"], rtol=1e-9
    )
    np.testing.assert_allclose(
        eager["strong_mismatch_b"],
        eager["strong_optimum_b"] + eager["factor_error_b"],
        rtol=1e-10,
    )
    seeds = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), clients)
    batched = jax.vmap(lambda c: fn.weak_mismatch(c, w, jax.tree.map(lambda x: x[0], c)).total)(
        seeds
    )
    np.testing.assert_allclose(
        batched[1],
        fn.weak_mismatch(
            jax.tree.map(lambda x: 2 * x, clients), w, jax.tree.map(lambda x: 2 * x[0], clients)
        ).total,
        rtol=1e-10,
    )


def test_bad_inputs(rng):
    m = 3
    clients, w = _clients(rng, m, {"l": (4, 5, 2)}), _weights(rng, m)
    wrong = {"l": LoRAFactors(jnp.zeros((4, 3)), jnp.zeros((3, 5)))}
    with pytest.raises(ValueError, match="broadcast: layer #0"):
        fn.weak_mismatch(clients, w, wrong)
    with pytest.raises(ValueError, match="weights: expected shape"):
        fn.weak_mismatch(clients, w[:2], jax.tree.map(lambda x: x[0], clients))
    bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), clients)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn.strong_mismatch(bad, w, jax.tree.map(lambda x: x[0], clients))
    with pytest.raises(ValueError, match="broadcast: contains NaN"):
        fn.weak_mismatch(clients, w, jax.tree.map(lambda x: x[0] * jnp.inf, clients))
    with pytest.raises(ValueError, match="has 2 LoRAFactors"):
        fn.weak_mismatch(clients, w, {"l": wrong["l"], "z": wrong["l"]})


def test_mixed_tree_with_bias_frozen_and_partial_base_delta(rng):
    # the simulator's client trees: LoRA layers, dense bias leaves (averaged), frozen None
    m = 3
    lora = _clients(rng, m, {"l1": (3, 4, 1), "l2": (2, 3, 1)})
    clients = {"l1": lora["l1"], "bias": jnp.asarray(rng.normal(size=(m, 3))), "frozen": None,
               "l2": lora["l2"]}  # fmt: skip
    w = _weights(rng, m)
    factors = {"l1": jax.tree.map(lambda x: x[0], lora["l1"]), "bias": jnp.zeros((m, 3)),
               "frozen": None, "l2": jax.tree.map(lambda x: x[0], lora["l2"])}  # fmt: skip
    delta = {"l1": None, "bias": None, "frozen": None, "l2": jnp.ones((2, 3))}
    got = fn.weak_mismatch(clients, w, Broadcast(factors, delta))
    b, a = np.asarray(lora["l2"].b), np.asarray(lora["l2"].a)
    p, q = b[0], a[0]
    want_l2 = sum(float(w[i]) * np.sum((p @ q + 1.0 - b[i] @ a[i]) ** 2) for i in range(m))
    np.testing.assert_allclose(got.layers[1], want_l2, rtol=1e-10)
    no_delta = fn.weak_mismatch(lora, w, {k: factors[k] for k in ("l1", "l2")})
    np.testing.assert_allclose(got.layers[0], no_delta.layers[0], rtol=1e-12)
    metrics = fn.round_metrics(clients, w, Broadcast(factors, delta))
    assert metrics["weak_mismatch_layers"].shape == (2,)
