"""The paper's MLP: forward against a numpy closed form, init, ranks, cache, full mode, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax as aj


def _numpy_forward(frozen, trainable, x, scale):
    h = np.asarray(x).reshape(x.shape[0], -1)
    names = sorted(frozen)
    for i, name in enumerate(names):
        f = trainable.lora[name]
        w = np.asarray(frozen[name]) + scale * np.asarray(f.b) @ np.asarray(f.a)
        h = h @ w.T + np.asarray(trainable.extra[name])
        if i < len(names) - 1:
            h = np.maximum(h, 0.0)
    return h


@pytest.mark.parametrize("cache", [True, False])
def test_forward_matches_merged_numpy(rng, cache):
    model = aj.paper_mlp(12, (7, 5), 4, ranks=(2, 3, 1), dtype=jnp.float64, cache_first_layer=cache)
    assert model.caches is cache
    frozen, trainable = jax.jit(model.init)(jax.random.key(0))
    lora = jax.tree.map(
        lambda f: f._replace(b=jnp.asarray(rng.normal(size=f.b.shape))),
        trainable.lora,
        is_leaf=aj.is_lora,
    )
    trainable = trainable._replace(lora=lora)
    x = jnp.asarray(rng.normal(size=(6, 3, 4)))  # images are flattened to 12 features
    got = model.apply(frozen, trainable, model.prepare(frozen, x), 0.5)
    np.testing.assert_allclose(got, _numpy_forward(frozen, trainable, x, 0.5), rtol=1e-12)
    if cache:
        np.testing.assert_allclose(
            model.prepare(frozen, x)["h0"], x.reshape(6, 12) @ frozen["dense_0"].T
        )


def test_init_follows_pytorch_and_peft():
    model = aj.paper_mlp(784, (200, 200), 10, ranks=aj.paper_mlp_ranks(0.07), dtype=jnp.float64)
    frozen, trainable = jax.jit(model.init)(jax.random.key(1))
    assert {n: w.shape for n, w in frozen.items()} == {
        "dense_0": (200, 784), "dense_1": (200, 200), "dense_2": (10, 200)
    }  # fmt: skip
    for name, w in frozen.items():
        bound = 1 / np.sqrt(w.shape[1])
        f = trainable.lora[name]
        np.testing.assert_array_equal(f.b, 0.0)  # peft: B = 0
        for t in (w, f.a, trainable.extra[name]):
            assert np.abs(t).max() <= bound and np.abs(t).max() > 0.9 * bound
        assert abs(float(np.std(w)) - bound / np.sqrt(3)) < 0.05 * bound  # uniform(-bound, bound)
    assert [trainable.lora[n].rank for n in sorted(frozen)] == [11, 11, 7]
    # Only the trainable tree is communicated: LoRA factors and biases.
    stacked = aj.aggregation.broadcast_to_clients(trainable, 1)
    values = sum(11 * (200 + k) for k in (784, 200)) + 7 * (10 + 200) + 410
    assert aj.aggregation.tree_bytes_per_client(stacked) == 8 * values
    # Different layers draw different numbers from the single uniform draw.
    assert not np.allclose(frozen["dense_1"][:10, :10], frozen["dense_2"][:10, :10])


def test_paper_ranks():
    assert aj.paper_mlp_ranks(0.01) == (1, 1, 1)
    assert aj.paper_mlp_ranks(0.03) == (4, 4, 3)
    assert aj.paper_mlp_ranks(0.05) == (8, 8, 5)
    assert aj.paper_mlp_ranks(0.07) == (11, 11, 7)
    with pytest.raises(ValueError, match="delta"):
        aj.paper_mlp_ranks(0.0)


def test_full_mode_has_the_same_base_and_trains_dense_weights(rng):
    lora_model = aj.paper_mlp(8, (6,), 3, ranks=2, dtype=jnp.float64)
    full_model = aj.paper_mlp(8, (6,), 3, mode="full", dtype=jnp.float64)
    frozen, trainable = lora_model.init(jax.random.key(2))
    empty, full = full_model.init(jax.random.key(2))
    assert empty == {}
    jax.tree.map(np.testing.assert_array_equal, full.lora, frozen)  # same random base
    x = jnp.asarray(rng.normal(size=(5, 8)))
    np.testing.assert_allclose(
        full_model.apply(empty, full, full_model.prepare(empty, x), 1.0),
        lora_model.apply(frozen, trainable, lora_model.prepare(frozen, x), 1.0),  # B = 0
        rtol=1e-12,
    )


def test_bad_shapes_and_ranks():
    with pytest.raises(ValueError, match="dense_2"):
        aj.paper_mlp(8, (6, 6), 3, ranks=4)
    with pytest.raises(ValueError, match="one rank per layer"):
        aj.paper_mlp(8, (6, 6), 3, ranks=(1, 1))
    with pytest.raises(ValueError, match="mode"):
        aj.paper_mlp(8, (6,), 3, mode="dense")
    model = aj.paper_mlp(8, (6,), 3, ranks=1)
    frozen, _ = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="expects 8 features"):
        model.prepare(frozen, jnp.ones((2, 9)))
