"""The one-client update: vmapped equals per-client, equals an independent PyTorch-style SGD loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax as aj
from abo_jax.lora import LoRAFactors

M, N_MAX, FEAT, CLASSES, BATCH = 3, 10, 6, 4, 4
SIZES = (10, 7, 3)  # client 2 has only one non-empty batch per epoch


def _problem(rng):
    x = rng.normal(size=(M, N_MAX, FEAT))
    y = rng.integers(0, CLASSES, size=(M, N_MAX)).astype(np.int32)
    mask = np.arange(N_MAX)[None, :] < np.array(SIZES)[:, None]
    x, y = np.where(mask[..., None], x, 0.0), np.where(mask, y, 0)
    model = aj.paper_mlp(FEAT, (5, 5), CLASSES, ranks=2, dtype=jnp.float64, cache_first_layer=False)
    frozen, trainable = jax.jit(model.init)(jax.random.key(1))
    # Non-zero B so that every factor has a gradient from the first step.
    trainable = trainable._replace(
        lora=jax.tree.map(
            lambda f: f._replace(b=0.3 * jnp.ones_like(f.b)),
            trainable.lora,
            is_leaf=aj.is_lora,
        )
    )
    return model, frozen, trainable, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)


def _reference_update(frozen, trainable, x, y, batches, lr, momentum, wd, scale):
    """PyTorch SGD semantics on the merged weights' forward, skipping empty batches, in plain Python."""
    names = sorted(frozen)

    def loss(params, xb, yb, wb):
        h = xb
        for i, name in enumerate(names):
            f = params.lora[name]
            w = frozen[name] + scale * f.b @ f.a  # merged: an independent path from apply_lora
            h = h @ w.T + params.extra[name][None, :]
            if i < len(names) - 1:
                h = jnp.maximum(h, 0.0)
        logp = h - jax.scipy.special.logsumexp(h, axis=-1, keepdims=True)
        return -jnp.sum(wb * logp[jnp.arange(yb.shape[0]), yb]) / jnp.sum(wb)

    grad_fn = jax.jit(jax.grad(loss))
    params = jax.tree.map(np.asarray, trainable)
    buf = None
    for idx, valid in batches:
        if not np.any(valid):
            continue
        grads = grad_fn(params, x[idx], y[idx], np.asarray(valid, float))
        grads = jax.tree.map(lambda g, p: np.asarray(g) + wd * p, grads, params)
        buf = grads if buf is None else jax.tree.map(lambda b, g: momentum * b + g, buf, grads)
        params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
    return params


def _epochs_batches(key, mask, epochs):
    out = []
    for e in range(epochs):
        idx, valid = aj.data.epoch_batches(jax.random.fold_in(key, e), mask, BATCH)
        out.extend(zip(np.asarray(idx), np.asarray(valid), strict=True))
    return out


def test_vmapped_update_equals_separate_updates_and_reference(rng):
    model, frozen, trainable, x, y, mask = _problem(rng)
    opt = aj.paper_sgd(0.05, momentum=0.9, weight_decay=1e-2)
    keys = jax.random.split(jax.random.key(7), M)
    scales = jnp.array([1.0, 0.5, 2.0])
    epochs = 2

    def one(t, xi, yi, mi, ki, si):
        return aj.client_update(
            model, opt, frozen, t, xi, yi, mi, ki,
            local_epochs=epochs, batch_size=BATCH, lora_scale=si,
        )  # fmt: skip

    stacked = aj.aggregation.broadcast_to_clients(trainable, M)
    inputs = jax.vmap(model.prepare, in_axes=(None, 0))(frozen, x)
    vmapped = jax.jit(jax.vmap(one))(stacked, inputs, y, mask, keys, scales)
    for i in range(M):
        single = jax.jit(one)(trainable, inputs[i], y[i], mask[i], keys[i], scales[i])
        got = jax.tree.map(lambda v, i=i: v[i], vmapped.trainable)
        np.testing.assert_allclose(vmapped.train_loss[i], single.train_loss, rtol=1e-12)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
            got,
            single.trainable,
        )
        ref = _reference_update(
            frozen, trainable, x[i], y[i], _epochs_batches(keys[i], mask[i], epochs),
            0.05, 0.9, 1e-2, float(scales[i]),
        )  # fmt: skip
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, ref
        )
        steps = epochs * -(-SIZES[i] // BATCH)
        assert int(vmapped.num_steps[i]) == steps


def test_empty_client_is_a_no_op_including_momentum(rng):
    model, frozen, trainable, x, y, _ = _problem(rng)
    opt = aj.paper_sgd()
    empty = jnp.zeros((N_MAX,), bool)
    start_state = opt.init(trainable)
    out = aj.client_update(
        model, opt, frozen, trainable, model.prepare(frozen, x[0]), y[0], empty, jax.random.key(0),
        local_epochs=3, batch_size=BATCH, opt_state=start_state,
    )  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), out.trainable, trainable)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), out.opt_state, start_state)
    assert int(out.num_steps) == 0 and float(out.train_loss) == 0.0


def test_trainable_mask_freezes_factors_against_decay_and_momentum(rng):
    model, frozen, trainable, x, y, mask = _problem(rng)
    opt = aj.paper_sgd(0.1, weight_decay=0.5)
    tmask = aj.simulation.lora_train_mask(trainable.lora, a=False)
    out = aj.client_update(
        model, opt, frozen, trainable, model.prepare(frozen, x[0]), y[0], mask[0], jax.random.key(0),
        local_epochs=2, batch_size=BATCH, trainable_mask=tmask,
    )  # fmt: skip
    for name in trainable.lora:
        np.testing.assert_array_equal(out.trainable.lora[name].a, trainable.lora[name].a)
        assert not np.allclose(out.trainable.lora[name].b, trainable.lora[name].b)
        assert not np.allclose(out.trainable.extra[name], trainable.extra[name])


def test_paper_sgd_matches_pytorch_recursion():
    w = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    opt = aj.paper_sgd(0.1, momentum=0.9, weight_decay=0.01)
    state = opt.init(w)
    buf, p = None, np.array([1.0, -2.0])
    for _ in range(3):
        upd, state = opt.update(g, state, w)
        w = optax.apply_updates(w, upd)
        d = np.array([0.5, 0.25]) + 0.01 * p
        buf = d if buf is None else 0.9 * buf + d
        p = p - 0.1 * buf
    np.testing.assert_allclose(w["w"], p, rtol=1e-12)


def test_bad_batch_size_and_epochs(rng):
    model, frozen, trainable, x, y, mask = _problem(rng)
    with pytest.raises(ValueError, match="batch_size"):
        aj.client_update(model, aj.paper_sgd(), frozen, trainable, x[0], y[0], mask[0],
                         jax.random.key(0), batch_size=0)  # fmt: skip
    with pytest.raises(ValueError, match="local_epochs"):
        aj.client_update(model, aj.paper_sgd(), frozen, trainable, x[0], y[0], mask[0],
                         jax.random.key(0), local_epochs=0)  # fmt: skip


def test_lora_train_mask_structure():
    lora = {"a": LoRAFactors(jnp.zeros((3, 1)), jnp.zeros((1, 2))), "b": None}
    m = aj.simulation.lora_train_mask(lora, b=False)
    assert m["b"] is None and not bool(m["a"].b) and bool(m["a"].a)
