"""The JAX BERT encoder and its LoRA model: parity with Hugging Face's PyTorch BertModel (the
pretrained MiniLM and a small random config), the prefix cache, factored LoRA against the merged
closed form, fold, a federated round, and what grows per client."""

import copy
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax as aj
from abo_jax.models import bert, minilm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load as load_torch_safetensors  # noqa: E402

SENTENCES = [
    "Hello, world!",
    "A fortune a day keeps the doctor away, or so the saying goes.",
    "Computers are useless. They can only give you answers.",
    "x",
]
SMALL = bert.BertConfig(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=16,
)


def _torch_bert(config, state_dict, dtype):
    model = transformers.BertModel(
        transformers.BertConfig.from_dict(config.to_dict()), add_pooling_layer=False
    )
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("pooler")}
    state_dict.pop("embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model.to(dtype).eval()


def _torch_states(model, ids, dtype):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(ids != 0, dtype=torch.long),
            output_hidden_states=True,
        )
    states = [h.numpy().astype(dtype) for h in out.hidden_states]
    mask = (ids != 0).astype(states[-1].dtype)[:, :, None]
    pooled = (states[-1] * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return states, pooled


def _jax_states(config, frozen, ids):
    states = jax.jit(lambda f, x: bert.bert_hidden_states(config, f, x))(frozen, jnp.asarray(ids))
    return [np.asarray(h) for h in states], np.asarray(bert.mean_pool(states[-1], ids != 0))


def _assert_parity(ours, theirs, *, rtol):
    (states, pooled), (ref_states, ref_pooled) = ours, theirs
    assert len(states) == len(ref_states)
    for i, (h, ref) in enumerate(zip([*states, pooled], [*ref_states, ref_pooled], strict=True)):
        # Relative to the layer's scale (LayerNorm outputs are O(1) to O(10)).
        np.testing.assert_allclose(h, ref, rtol=0, atol=rtol * np.abs(ref).max(), err_msg=f"{i}")


@pytest.fixture(scope="module")
def pretrained():
    config, params, tokenizer = minilm.load_minilm()
    with zipfile.ZipFile(minilm.minilm_zip_path()) as archive:
        state_dict = load_torch_safetensors(archive.read("model.safetensors"))
    return config, params, tokenizer, state_dict


@pytest.fixture(scope="module")
def reference(pretrained):
    """Token ids of SENTENCES and Hugging Face's hidden states for them, float32 and float64."""
    config, _, tokenizer, state_dict = pretrained
    ids = minilm.tokenize(tokenizer, SENTENCES, 24)
    assert (ids == 0).any()  # padding is exercised
    model = _torch_bert(config, state_dict, torch.float32)  # built once (3 s), then copied
    states = {
        "float32": _torch_states(model, ids, np.float64),
        "float64": _torch_states(copy.deepcopy(model).double(), ids, np.float64),
    }
    return ids, states


def test_minilm_matches_transformers_in_float64(pretrained, reference):
    config, params, _, _ = pretrained
    ids, theirs = reference
    frozen = bert.bert_frozen(config, params, max_len=24, dtype=jnp.float64)
    _assert_parity(_jax_states(config, frozen, ids), theirs["float64"], rtol=1e-12)


def test_minilm_matches_transformers_to_float32_precision(pretrained, reference):
    config, params, _, _ = pretrained
    ids, theirs = reference
    frozen = bert.bert_frozen(config, params, max_len=24, dtype=jnp.float32)
    ours = _jax_states(config, frozen, ids)
    assert ours[0][-1].dtype == np.float32
    # Against the exact function (float64): float32 rounding over six layers, every position.
    _assert_parity(ours, theirs["float64"], rtol=1e-5)
    # Against torch's float32 on the real tokens and the pooled embedding (at padded positions
    # torch's own float32 error reaches 1e-4 of 10 by layer 5, ours 2e-5: compared above).
    real = ids != 0
    (states, pooled), (ref_states, ref_pooled) = ours, theirs["float32"]
    for h, ref in zip(
        [*[s[real] for s in states], pooled],
        [*[s[real] for s in ref_states], ref_pooled],
        strict=True,
    ):
        np.testing.assert_allclose(h, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def _random_params(key, config, rng):
    """Random weights with non-trivial biases and LayerNorms, so every term is exercised."""
    params = bert.random_bert_params(key, config)
    for name, value in params.items():
        if name.endswith(".bias") or name.endswith("LayerNorm.weight"):
            params[name] = (value + 0.1 * rng.normal(size=value.shape)).astype(np.float32)
    return params


def _ids(rng, n, length, vocab, min_len=2):
    ids = rng.integers(1, vocab, (n, length)).astype(np.int32)
    lengths = rng.integers(min_len, length + 1, n)
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return ids


def test_small_random_config_matches_transformers(rng):
    params = _random_params(jax.random.key(0), SMALL, rng)
    ids = _ids(rng, 6, 12, SMALL.vocab_size)
    state_dict = {k: torch.from_numpy(v) for k, v in params.items()}
    theirs = _torch_states(_torch_bert(SMALL, state_dict, torch.float64), ids, np.float64)
    frozen = bert.bert_frozen(SMALL, params, dtype=jnp.float64)
    _assert_parity(_jax_states(SMALL, frozen, ids), theirs, rtol=1e-12)


def _random_b(trainable, rng):
    lora = aj.lora.map_lora(
        lambda f: f._replace(b=jnp.asarray(rng.normal(size=f.b.shape), f.b.dtype)),
        trainable.lora,
    )
    return trainable._replace(lora=lora)


def _head(trainable, pooled):
    w = trainable.extra["head"]
    return np.asarray(pooled) @ np.asarray(w["weight"]).T + np.asarray(w["bias"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cached_prefix_equals_the_full_forward(rng, dtype):
    config = SMALL._replace(num_hidden_layers=3)  # two cached layers, one adapted
    params = _random_params(jax.random.key(1), config, rng)
    ids = jnp.asarray(_ids(rng, 7, 10, config.vocab_size))
    model = bert.bert_lora_model(
        config, params, 5, ranks=3, lora_from_layer=2, max_len=12, dtype=dtype
    )
    assert model.caches
    frozen, trainable = model.init(jax.random.key(2))
    assert sorted(trainable.lora) == ["layer_2"]
    trainable = _random_b(trainable, rng)
    inputs = jax.jit(model.prepare)(frozen, ids)
    assert inputs["h"].shape == (7, 10, 32) and inputs["h"].dtype == dtype
    cached = jax.jit(model.apply)(frozen, trainable, inputs, 0.5)
    one = jax.jit(lambda f, t, x: bert.bert_hidden_states(config, f, x, lora=t.lora, scale=0.5))
    full = _head(trainable, bert.mean_pool(one(frozen, trainable, ids)[-1], ids != 0))
    # float32: the same operations, fused differently by XLA (rounding at 1e-7 of the logits).
    tol = 1e-6 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(cached, full, rtol=tol, atol=tol * np.abs(full).max())
    if dtype == jnp.float32:
        return
    # Large sets (evaluation, prepare) run in chunks: the same numbers.
    many = jnp.asarray(_ids(rng, 300, 10, config.vocab_size))
    chunked = jax.jit(lambda f, t, x: model.apply(f, t, model.prepare(f, x), 0.5))
    pooled = bert.mean_pool(one(frozen, trainable, many)[-1], many != 0)
    np.testing.assert_allclose(
        chunked(frozen, trainable, many), _head(trainable, pooled), rtol=1e-12
    )


def test_zero_b_is_the_pretrained_model(rng):
    params = _random_params(jax.random.key(3), SMALL, rng)
    ids = jnp.asarray(_ids(rng, 5, 8, SMALL.vocab_size))
    model = bert.bert_lora_model(
        SMALL, params, 3, ranks=2, targets=tuple(bert.BERT_TARGETS), max_len=8, dtype=jnp.float64
    )
    assert not model.caches  # LoRA from layer 0: nothing to cache
    frozen, trainable = model.init(jax.random.key(4))
    lora = trainable.lora["layer_0"]["ffn_in"]
    assert lora.b.shape == (48, 2) and lora.a.shape == (2, 32) and not np.any(lora.b)
    base = bert.bert_hidden_states(SMALL, frozen, ids)
    expected = _head(trainable, bert.mean_pool(base[-1], ids != 0))
    np.testing.assert_allclose(model.apply(frozen, trainable, ids, 1.0), expected, rtol=1e-13)


@pytest.mark.parametrize("target", list(bert.BERT_TARGETS))
def test_factored_lora_equals_the_merged_weight(rng, target):
    """``x W0^T + b + s (x A^T) B^T`` against the layer with ``W0 + s B A`` merged in numpy."""
    params = _random_params(jax.random.key(5), SMALL, rng)
    frozen = bert.bert_frozen(SMALL, params, dtype=jnp.float64)
    layer = frozen["layer_1"]
    d, k = layer[target]["w"].shape
    factors = aj.LoRAFactors(
        b=jnp.asarray(rng.normal(size=(d, 3))), a=jnp.asarray(rng.normal(size=(3, k)))
    )
    h = jnp.asarray(rng.normal(size=(4, 9, 32)))
    mask = jnp.asarray(_ids(rng, 4, 9, 10) != 0)
    kw = dict(num_heads=4, eps=SMALL.layer_norm_eps)
    got = bert.bert_layer(layer, h, mask, lora={target: factors}, scale=0.3, **kw)
    merged_w = np.asarray(layer[target]["w"]) + 0.3 * np.asarray(factors.b) @ np.asarray(factors.a)
    merged = {**layer, target: {**layer[target], "w": jnp.asarray(merged_w)}}
    np.testing.assert_allclose(got, bert.bert_layer(merged, h, mask, **kw), rtol=1e-11, atol=1e-12)
    # fold adds the same s B A to the frozen base (FedEx-LoRA's residual).
    model = bert.bert_lora_model(
        SMALL, params, 3, targets=(target,), ranks=3, max_len=8, dtype=jnp.float64
    )
    frz, _ = model.init(jax.random.key(0))
    delta = {"layer_1": {target: jnp.asarray(merged_w) - layer[target]["w"]}, "layer_0": None}
    np.testing.assert_allclose(model.fold(frz, delta)["layer_1"][target]["w"], merged_w)
    assert model.fold(frz, None) is frz


def test_bad_arguments_are_refused_by_name():
    params = bert.random_bert_params(jax.random.key(0), SMALL)
    make = lambda **kw: bert.bert_lora_model(SMALL, params, 3, **{"max_len": 8, **kw})
    with pytest.raises(NotImplementedError, match="head='local' is not supported yet"):
        make(head="local")
    with pytest.raises(ValueError, match="targets"):
        make(targets=("query", "dense"))
    with pytest.raises(ValueError, match="lora_from_layer"):
        make(lora_from_layer=2)
    with pytest.raises(ValueError, match="ranks"):
        make(ranks={"query": 2})
    with pytest.raises(ValueError, match="max_len"):
        make(max_len=17)
    with pytest.raises(ValueError, match="tensors missing"):
        bert.bert_lora_model(
            SMALL, {"embeddings.word_embeddings.weight": np.zeros((60, 32))}, 3, max_len=8
        )
    model = make(max_len=8)
    frozen, _ = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="exceed max_len"):
        model.prepare(frozen, jnp.ones((2, 9), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        model.prepare(frozen, jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="hidden_act"):
        bert.BertConfig.from_dict({**SMALL.to_dict(), "hidden_act": "relu"})


def _tiny_clients(rng, m=4, n=6, length=8):
    ids = _ids(rng, m * n, length, SMALL.vocab_size)
    labels = rng.integers(0, 3, m * n)
    partition = aj.iid(labels, num_clients=m, key=jax.random.key(0))
    return aj.pad_clients(ids, labels, partition)


def _shapes_in(jaxpr):
    """Every shape a (closed) jaxpr computes, sub-jaxprs (scan, cond, pjit, ...) included."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes_in(inner)


@pytest.mark.parametrize("operator", ["sum_product", "product_sum"])
def test_a_federated_round_trains_the_factors_with_one_frozen_base(rng, operator):
    params = _random_params(jax.random.key(6), SMALL, rng)
    data = _tiny_clients(rng)
    model = bert.bert_lora_model(
        SMALL, params, 3, ranks=2, lora_from_layer=1, max_len=8, dtype=jnp.float64
    )
    abo = aj.make_operator(operator)
    make = lambda cached: aj.make_simulation(
        model, abo, optimizer=optax.sgd(0.5), batch_size=3, precompute=cached
    )
    sim = make(True)
    start = sim.init(jax.random.key(7), data)
    inputs = sim.prepare(start, data)
    assert inputs["h"].shape == (4, 6, 8, 32)  # the cached prefix: one per example
    state, metrics = sim.round(start, data, inputs)
    assert np.isfinite(float(metrics["train_loss"]))
    frozen, _ = model.init(jax.random.key(0))
    # The frozen base has no client axis: one copy for the whole round.
    assert jax.tree.map(jnp.shape, state.frozen) == jax.tree.map(jnp.shape, frozen)
    for new, old in zip(*map(jax.tree.leaves, (state.clients, start.clients)), strict=True):
        assert float(jnp.max(jnp.abs(new - old))) > 0  # every factor and the head moved
    # No (m, d, k) array anywhere in the round: neither a per-client copy of a base weight nor a
    # merged W0 + s B A (the factors stay factored).
    m = data.y.shape[0]
    weight_shapes = {(m, *w.shape) for w in jax.tree.leaves(frozen) if w.ndim == 2}
    shapes = set(_shapes_in(jax.make_jaxpr(sim.round_step)(start, data, inputs).jaxpr))
    assert (m, 32, 2) in shapes  # the walk reaches the clients' training (B's gradient)
    assert not weight_shapes & shapes
    if operator != "sum_product":
        return
    # The prefix cache changes nothing: the same trained state as the full forward every step.
    uncached = make(False)
    assert uncached.prepare(start, data) is None
    other, _ = uncached.round(uncached.init(jax.random.key(7), data), data)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(other), strict=True):
        if jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)


def test_full_mode_trains_the_same_projections_densely(rng):
    """The reference for fedavg_full: dense (d, k) weights of the targets, starting at W0."""
    params = _random_params(jax.random.key(8), SMALL, rng)
    kw = dict(lora_from_layer=1, max_len=8, dtype=jnp.float64)
    model = bert.bert_lora_model(SMALL, params, 3, mode="full", **kw)
    frozen, trainable = model.init(jax.random.key(0))
    assert jax.tree.map(jnp.shape, trainable.lora) == {
        "layer_1": {"query": (32, 32), "value": (32, 32)}
    }
    ids = jnp.asarray(_ids(rng, 5, 8, SMALL.vocab_size))
    lora_model = bert.bert_lora_model(SMALL, params, 3, **kw)
    _, lora_trainable = lora_model.init(jax.random.key(0))
    np.testing.assert_allclose(  # W = W0 and B = 0: the same model, the same head
        model.apply(frozen, trainable, model.prepare(frozen, ids), 1.0),
        lora_model.apply(frozen, lora_trainable, lora_model.prepare(frozen, ids), 1.0),
        rtol=1e-13,
    )
    data = _tiny_clients(rng)
    sim = aj.make_simulation(model, aj.fedavg_full(), optimizer=optax.sgd(0.5), batch_size=3)
    start = sim.init(jax.random.key(1), data)
    state, _ = sim.round(start, data, sim.prepare(start, data))
    for new, old in zip(*map(jax.tree.leaves, (state.clients, start.clients)), strict=True):
        assert float(jnp.max(jnp.abs(new - old))) > 0
    with pytest.raises(ValueError, match="no base to correct"):
        model.fold(frozen, {"layer_1": {"query": jnp.zeros((32, 32))}})
