"""LoRA factors: init, apply, merge, scaling, model-wide specs on real flax models, rank masks, and
the flax nnx converters against a real ``nnx.LoRA`` module."""

import math

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import abo_jax as aj

F64 = jnp.float64


def _factors(rng, d, k, r, lead=()):
    return aj.LoRAFactors(
        b=jnp.asarray(rng.normal(size=(*lead, d, r))), a=jnp.asarray(rng.normal(size=(*lead, r, k)))
    )


@pytest.mark.parametrize("d,k,r", [(7, 300, 3), (200, 50, 50)])
def test_init_kaiming_shapes_bounds(d, k, r):
    f = aj.init_lora(jax.random.key(0), d, k, r, dtype=F64)
    assert f.b.shape == (d, r) and f.a.shape == (r, k) and f.rank == r and f.shape == (d, k)
    np.testing.assert_array_equal(f.b, 0.0)
    bound = 1.0 / math.sqrt(k)
    assert np.all(np.abs(f.a) <= bound)
    assert np.max(np.abs(f.a)) > 0.9 * bound  # fills the interval (uniform)
    np.testing.assert_allclose(np.std(f.a), bound / math.sqrt(3), rtol=0.1)  # U(-c, c) std


def test_init_gaussian_and_errors():
    f = aj.init_lora(jax.random.key(1), 10, 4000, 4, init="gaussian", dtype=F64)
    np.testing.assert_allclose(np.std(f.a), 1 / 4, rtol=0.05)
    np.testing.assert_array_equal(f.b, 0.0)
    with pytest.raises(ValueError, match="rank"):
        aj.init_lora(jax.random.key(0), 3, 5, 4)
    with pytest.raises(ValueError, match="init"):
        aj.init_lora(jax.random.key(0), 3, 5, 2, init="ones")


def test_apply_and_merge_closed_form():
    rng = np.random.default_rng(0)
    d, k, r, s = 5, 7, 3, 0.7
    f = _factors(rng, d, k, r)
    w0, bias = rng.normal(size=(d, k)), rng.normal(size=d)
    x = rng.normal(size=(2, 4, k))  # arbitrary leading axes
    b, a = np.asarray(f.b), np.asarray(f.a)
    expected = x @ w0.T + s * (x @ a.T @ b.T) + bias
    got = aj.apply_lora(jnp.asarray(x), jnp.asarray(w0), f, s, jnp.asarray(bias))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    merged = aj.merge_lora(jnp.asarray(w0), f, s)
    np.testing.assert_allclose(merged, w0 + s * b @ a, rtol=1e-12)
    np.testing.assert_allclose(aj.lora_delta(f, s), s * b @ a, rtol=1e-12)
    np.testing.assert_allclose(x @ np.asarray(merged).T + bias, expected, rtol=1e-10)


def test_lora_scale():
    assert aj.lora.lora_scale(16.0, 8) == 2.0
    assert aj.lora.lora_scale(16.0, 4, rslora=True) == 8.0
    assert aj.lora.lora_scale(3.0, 3) == 1.0  # the paper's scale 1 (alpha = r)
    with pytest.raises(ValueError, match="rank"):
        aj.lora.lora_scale(1.0, 0)


class _MLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = jax.nn.relu(linen.Dense(6, param_dtype=F64)(x))
        x = jax.nn.relu(linen.Dense(5, param_dtype=F64)(x))
        return linen.Dense(3, param_dtype=F64)(x)


def test_spec_init_merge_on_a_linen_mlp():
    rng = np.random.default_rng(1)
    model = _MLP()
    x = jnp.asarray(rng.normal(size=(4, 8)))
    params = model.init(jax.random.key(0), x)["params"]
    # Adapt the first and last layers only, with different ranks; biases stay frozen.
    ranks = {"Dense_0": 2, "Dense_2": 1}

    def rank(path, leaf):
        return ranks.get(path[0].key)

    spec = aj.lora.lora_spec(params, rank, where=lambda path, leaf: path[-1].key == "kernel")
    assert spec["Dense_0"] == {"kernel": 2, "bias": None}
    assert spec["Dense_1"] == {"kernel": None, "bias": None}
    lora = aj.lora.init_lora_tree(
        jax.random.key(1), params, spec
    )  # kernels are (in, out): "in_out"
    assert lora["Dense_0"]["kernel"].b.shape == (6, 2) and lora["Dense_0"]["kernel"].a.shape == (
        2,
        8,
    )
    assert lora["Dense_1"]["kernel"] is None and lora["Dense_2"]["bias"] is None
    # B = 0 at init: merging changes nothing; with random B it adds s x A^T B^T per layer.
    same = aj.lora.merge_lora_tree(params, lora, 0.5)
    jax.tree.map(np.testing.assert_array_equal, same, params)
    lora = aj.lora.map_lora(lambda f: f._replace(b=jnp.asarray(rng.normal(size=f.b.shape))), lora)
    s = 0.5
    merged = aj.lora.merge_lora_tree(params, lora, s)
    got = model.apply({"params": merged}, x)

    def layer(h, name):
        p, f = params[name], lora[name]["kernel"]
        if f is None:
            return h @ p["kernel"] + p["bias"][None]
        return aj.apply_lora(h, p["kernel"].T, f, s, p["bias"])

    h = jax.nn.relu(layer(x, "Dense_0"))
    h = jax.nn.relu(layer(h, "Dense_1"))
    np.testing.assert_allclose(got, layer(h, "Dense_2"), rtol=1e-10)
    # One layer in closed form: merged output == base output + s x A^T B^T.
    f0 = lora["Dense_0"]["kernel"]
    dense = linen.Dense(6, param_dtype=F64)
    p0 = {"params": params["Dense_0"]}
    p0_merged = {"params": merged["Dense_0"]}
    extra = s * np.asarray(x) @ np.asarray(f0.a).T @ np.asarray(f0.b).T
    np.testing.assert_allclose(dense.apply(p0_merged, x), dense.apply(p0, x) + extra, rtol=1e-10)
    assert len(aj.lora.lora_leaves(lora)) == 2


def test_layout_and_delta_tree():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.zeros(3)}
    spec = {"w": 2, "b": None}
    out_in = aj.lora.init_lora_tree(jax.random.key(0), params, spec, kernel_layout="out_in")
    assert out_in["w"].shape == (4, 3)
    in_out = aj.lora.init_lora_tree(jax.random.key(0), params, spec)
    assert in_out["w"].shape == (3, 4)
    with pytest.raises(ValueError, match="kernel_layout"):
        aj.lora.init_lora_tree(jax.random.key(0), params, spec, kernel_layout="rows")
    delta = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": None}  # (d, k) for an (in, out) kernel
    added = aj.lora.add_delta_tree(params, delta)
    np.testing.assert_allclose(added["w"], params["w"] + delta["w"].T)
    np.testing.assert_array_equal(added["b"], params["b"])
    assert aj.lora.add_delta_tree(params, None) is params
    with pytest.raises(ValueError, match="delta"):
        aj.lora.add_delta_tree(params, {"w": jnp.zeros((4, 3)), "b": None})


def test_rank_mask_and_mask_rank():
    rng = np.random.default_rng(3)
    ranks = np.array([1, 3, 2])
    mask = aj.lora.rank_mask(jnp.asarray(ranks), 3)
    np.testing.assert_array_equal(mask, np.arange(3)[None, :] < ranks[:, None])
    f = _factors(rng, 5, 4, 3, lead=(3,))
    g = aj.lora.mask_rank(f, jnp.asarray(ranks))
    for i, r in enumerate(ranks):
        np.testing.assert_array_equal(g.b[i, :, :r], f.b[i, :, :r])
        np.testing.assert_array_equal(g.b[i, :, r:], 0.0)
        np.testing.assert_array_equal(g.a[i, :r], f.a[i, :r])
        np.testing.assert_array_equal(g.a[i, r:], 0.0)
    single = aj.lora.mask_rank(_factors(rng, 5, 4, 3), 2)  # unbatched factors, scalar rank
    np.testing.assert_array_equal(single.a[2], 0.0)
    assert np.all(single.a[:2] != 0)


def test_nnx_converters_round_trip_against_a_real_nnx_lora():
    rng = np.random.default_rng(4)
    d, k, r, s = 6, 5, 2, 1.5
    f = _factors(rng, d, k, r)
    base = nnx.Linear(k, d, param_dtype=F64, rngs=nnx.Rngs(0))
    module = nnx.LoRA(k, r, d, base_module=base, param_dtype=F64, rngs=nnx.Rngs(1))
    # nnx.LoRA applies no scale: fold s into b.
    lora_a, lora_b = aj.lora.to_nnx_lora(aj.LoRAFactors(b=s * f.b, a=f.a))
    assert lora_a.shape == (k, r) and lora_b.shape == (r, d)
    module.lora_a[...] = lora_a
    module.lora_b[...] = lora_b
    x = jnp.asarray(rng.normal(size=(3, k)))
    expected = aj.apply_lora(x, base.kernel[...].T, f, s, base.bias[...])
    np.testing.assert_allclose(module(x), expected, rtol=1e-12)
    back = aj.lora.from_nnx_lora(module.lora_a[...], module.lora_b[...])
    np.testing.assert_allclose(back.b, s * f.b, rtol=1e-15)
    np.testing.assert_array_equal(back.a, f.a)
    # And from a module's own (random) init back to ours: the same function of x.
    fresh = nnx.LoRA(
        k, r, d, param_dtype=F64, b_initializer=nnx.initializers.normal(1.0), rngs=nnx.Rngs(2)
    )
    ours = aj.lora.from_nnx_lora(fresh.lora_a[...], fresh.lora_b[...])
    np.testing.assert_allclose(fresh(x), aj.apply_lora(x, jnp.zeros((d, k)), ours), rtol=1e-12)
    with pytest.raises(ValueError, match="rank mismatch"):
        aj.lora.from_nnx_lora(jnp.zeros((k, 2)), jnp.zeros((3, d)))
