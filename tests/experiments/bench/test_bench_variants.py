"""The round's variants: each one is the library's maths by another path, and the suites run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax
from abo_jax.linalg import svd
from experiments.bench import variants


@pytest.mark.parametrize("real", [12, 7, 0])
def test_key_value_sort_batches_give_the_librarys_orders(real):
    # The same draws and the same stable partition, by XLA's key-value sorts: identical batches.
    mask = jnp.arange(12) < real
    for seed in range(3):
        key = jax.random.key(seed)
        ours = variants.key_value_sort_batches(key, mask, 5)
        ref = abo_jax.data.epoch_batches(key, mask, 5)
        for o, e in zip(ours, ref, strict=True):
            np.testing.assert_array_equal(np.asarray(o), np.asarray(e))


def _factors(m, d, r, k, seed=0):
    kb, ka, kw = jax.random.split(jax.random.key(seed), 3)
    b = jax.random.normal(kb, (m, d, r), jnp.float32)
    a = jax.random.normal(ka, (m, r, k), jnp.float32)
    return {"w": abo_jax.LoRAFactors(b, a)}, jax.random.dirichlet(kw, jnp.ones(m, jnp.float32))


@pytest.mark.parametrize("shape", [(3, 16, 2, 12), (4, 6, 3, 5)])  # stacked path, dense path
def test_sum_product_with_svd_is_the_librarys_sp(shape):
    clients, weights = _factors(*shape)
    ref, _, ref_diag = jax.jit(abo_jax.sum_product().aggregate)(clients, weights)
    for fn in (svd, variants.pure_callback_svd):
        ours, _, diag = jax.jit(variants.sum_product_with_svd(fn).aggregate)(clients, weights)
        for o, e in zip(jax.tree.leaves(ours.factors), jax.tree.leaves(ref.factors), strict=True):
            np.testing.assert_array_equal(np.asarray(o), np.asarray(e))
        np.testing.assert_array_equal(np.asarray(diag["sp_tail"]), np.asarray(ref_diag["sp_tail"]))


def test_pure_callback_svd_is_an_svd():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3), jnp.float32)
    u, s, vt = jax.jit(variants.pure_callback_svd)(x)
    assert (u.shape, s.shape, vt.shape) == ((2, 5, 3), (2, 3), (2, 3, 3))
    np.testing.assert_allclose(np.einsum("bij,bj,bjk->bik", u, s, vt), x, atol=1e-5)


def test_fused_paper_sgd_is_paper_sgd():
    params = {"w": jnp.arange(4.0, dtype=jnp.float32), "b": jnp.ones(2, jnp.float32)}
    ours, ref = variants.fused_paper_sgd(0.1, 0.9, 1e-2), abo_jax.paper_sgd(0.1, 0.9, 1e-2)
    po, so, pr, sr = params, ours.init(params), params, ref.init(params)
    for step in range(3):
        grads = jax.tree.map(lambda p, step=step: jnp.sin(p + step), po)
        uo, so = ours.update(grads, so, po)
        ur, sr = ref.update(grads, sr, pr)
        po, pr = optax.apply_updates(po, uo), optax.apply_updates(pr, ur)
    for o, e in zip(jax.tree.leaves(po), jax.tree.leaves(pr), strict=True):
        np.testing.assert_allclose(o, e, rtol=1e-6)


def test_numpy_lora_products_equal_every_jax_layout():
    rng = np.random.default_rng(0)
    m, bs, k, d, r = 3, 5, 7, 6, 2
    x, g = rng.standard_normal((m, bs, k)), rng.standard_normal((m, bs, d))
    a, b = rng.standard_normal((m, r, k)), rng.standard_normal((m, d, r))
    ours = variants.numpy_lora_products(x, a, b, g)
    for layout in ("client_leading", "client_second", "multiply_sum", "dense_diagonal"):
        ref = variants.lora_products(layout, m)(x, a, b, g)
        for o, e in zip(ours, ref, strict=True):
            np.testing.assert_allclose(o, np.asarray(e), rtol=1e-10, atol=1e-10)
    z, db, da = ours  # by hand: z_c = (x_c a_c^T) b_c^T, dB_c = g_c^T (x_c a_c^T)
    np.testing.assert_allclose(z[1], (x[1] @ a[1].T) @ b[1].T, rtol=1e-12)
    np.testing.assert_allclose(db[2], g[2].T @ (x[2] @ a[2].T), rtol=1e-12)


@pytest.mark.parametrize("suite", ["rounds", "shuffle", "svd"])
def test_quick_suites_time_every_variant_and_agree(tmp_path, suite):
    variants.main(["--quick", "--suite", suite, "--out", str(tmp_path)])
    data = json.loads((tmp_path / f"variants_{suite}.json").read_text())
    assert data["config"]["suite"] == suite and len(data["rows"]) >= 2
    assert all(r["call_s"] > 0 for r in data["rows"])
    # Every variant computes the same numbers: the same rounds, orders, or SVDs (numpy's LAPACK).
    assert all(r["max_abs_diff_vs_first"] == 0.0 for r in data["rows"])
