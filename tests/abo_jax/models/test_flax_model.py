"""Any flax model through the LoRA spec: a small CNN pre-trained on digits 0-4, adapted to 0-9."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax as aj


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x[..., None]  # (b, 8, 8) -> (b, 8, 8, 1)
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)  # (b, 128)
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def _dense_kernels(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    return leaf.ndim == 2 and names[-1] == "kernel"


def test_cnn_pretrained_then_adapted_with_lora_federated():
    ds = aj.load_digits()
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    net = SmallCNN()
    apply_fn = lambda p, xb: net.apply({"params": p}, xb)
    params = net.init(jax.random.key(0), x[:1])["params"]

    # Pre-train the base briefly on digits 0-4 only (central Adam, full batch).
    seen = np.asarray(ds.y_train) < 5
    opt = optax.adam(0.01)

    @jax.jit
    def pretrain_step(p, s):
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(q, x[seen]), y[seen]
        ).mean()
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(150):
        params, state = pretrain_step(params, state)

    def accuracy(logits):
        return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(ds.y_test)))

    base_acc = accuracy(apply_fn(params, jnp.asarray(ds.x_test)))

    # LoRA on the two Dense kernels (ranks 4), biases trainable; conv kernel frozen.
    spec = aj.lora.lora_spec(params, 4, where=_dense_kernels)
    assert spec["Conv_0"]["kernel"] is None and spec["Dense_1"]["kernel"] == 4
    model = aj.flax_lora_model(apply_fn, params, spec)
    frozen, trainable = model.init(jax.random.key(1))
    assert trainable.extra["Conv_0"]["kernel"] is None
    assert trainable.extra["Dense_0"]["bias"].shape == (32,)
    # B = 0: the adapted model starts exactly as the pre-trained one.
    np.testing.assert_allclose(
        model.apply(frozen, trainable, x[:7], 1.0), apply_fn(params, x[:7]), rtol=1e-12, atol=1e-12
    )

    part = aj.iid(ds.y_train, num_clients=5, key=jax.random.key(2))
    data = aj.pad_clients(ds.x_train, ds.y_train, part)
    sim = aj.make_simulation(model, aj.product_sum(), optimizer=optax.adam(0.01), batch_size=32)
    hist, _ = aj.run(
        sim, data, (ds.x_test, ds.y_test), rounds=10, key=jax.random.key(3), progress=False
    )
    adapted = float(hist["test_accuracy"][-1])
    # The base cannot name digits 5-9 (it never saw them), so it is right at most on about half.
    assert base_acc < 0.55
    assert adapted > base_acc + 0.2, (base_acc, hist["test_accuracy"])


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_fold_base_delta_respects_the_kernel_layout(layout, rng):
    d, k = 5, 3  # non-square, so a missing or extra transpose fails
    w = rng.normal(size=(k, d) if layout == "in_out" else (d, k))
    params = {"layer": {"kernel": jnp.asarray(w), "bias": jnp.zeros(d)}}
    f = aj.LoRAFactors(jnp.asarray(rng.normal(size=(d, 2))), jnp.asarray(rng.normal(size=(2, k))))
    lora = {"layer": {"kernel": f, "bias": None}}
    delta = {"layer": {"kernel": 0.7 * f.b @ f.a, "bias": None}}
    folded = aj.models.fold_base_delta(params, delta, kernel_layout=layout)
    merged = aj.lora.merge_lora_tree(params, lora, 0.7, kernel_layout=layout)
    np.testing.assert_allclose(folded["layer"]["kernel"], merged["layer"]["kernel"], rtol=1e-12)
    assert aj.models.fold_base_delta(params, None) is params
    with pytest.raises(ValueError, match="does not match"):
        aj.models.fold_base_delta(params, {"layer": {"kernel": jnp.zeros((4, 4)), "bias": None}})
