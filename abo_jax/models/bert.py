"""A BERT encoder in pure JAX functions, with factored LoRA and a frozen-prefix cache.

The encoder is BERT's (Devlin et al.): embeddings (word + position + token type 0, LayerNorm),
then ``N`` post-LayerNorm layers of masked multi-head self-attention and a GELU (exact, erf) FFN;
sentences are embedded by mean pooling over the attention mask (Sentence-BERT). Weights come in
Hugging Face's names and peft orientation (``W (d, k)``, ``y = x @ W.T + b``), e.g. from
:func:`~abo_jax.models.minilm.load_minilm`.

:func:`bert_lora_model` makes it a :class:`~abo_jax.models.Model` for the simulator: LoRA factors
on the chosen projections of the layers from ``lora_from_layer`` on (never merged:
``y = x @ W0.T + b0 + s ((x @ A.T) @ B.T)``), a trainable classification head on the pooled
embedding, and the hidden states below the first adapted layer computed once per example by
``prepare`` (they depend only on the data and the frozen weights), generalizing the paper MLP's
first-layer cache.

References:
  Devlin et al., BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding, arXiv:1810.04805.
  Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685.
  Reimers and Gurevych, Sentence-BERT, arXiv:1908.10084 (mean pooling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.lora import LoRAFactors, init_lora
from abo_jax.models._base import Model, Trainable

__all__ = [
    "BertConfig",
    "BERT_TARGETS",
    "bert_frozen",
    "random_bert_params",
    "bert_embed",
    "bert_layer",
    "bert_hidden_states",
    "mean_pool",
    "bert_lora_model",
]

# Our projection names -> Hugging Face's module path inside ``encoder.layer.{i}``.
BERT_TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
_NORMS = {"attention_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}

# Rows per chunk when prepare or a large evaluation batch runs through the encoder (bounds the
# (n, heads, L, L) attention scores and (n, L, ffn) activations held at once).
_CHUNK = 256


class BertConfig(NamedTuple):
    """The shape of a BERT encoder (the fields of Hugging Face's ``config.json`` it uses)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BertConfig:
        """From a parsed ``config.json``; refuses what this encoder does not implement."""
        if config.get("model_type", "bert") != "bert":
            raise ValueError(f"config: model_type must be 'bert', got {config['model_type']!r}")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(
                f"config: hidden_act {config['hidden_act']!r} is not implemented (only 'gelu', "
                "the exact erf form)"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                "config: only absolute position embeddings are implemented, got "
                f"{config['position_embedding_type']!r}"
            )
        fields = {name: config[name] for name in cls._fields if name in config}
        missing = [f for f in cls._fields[:5] if f not in fields]
        if missing:
            raise ValueError(f"config: missing fields {missing}")
        out = cls(**fields)
        if out.hidden_size % out.num_attention_heads:
            raise ValueError(
                f"config: hidden_size {out.hidden_size} is not divisible by "
                f"num_attention_heads {out.num_attention_heads}"
            )
        if out.pad_token_id != 0:
            raise ValueError(
                f"config: pad_token_id must be 0 (mask = ids != 0), got {out.pad_token_id}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` fields (``BertConfig.from_dict`` of ``transformers``)."""
        return {
            **self._asdict(),
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
        }


def _hf(i: int, module: str, leaf: str) -> str:
    return f"encoder.layer.{i}.{module}.{leaf}"


def _expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    h, f = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    dk = {"ffn_in": (f, h), "ffn_out": (h, f)}
    for i in range(config.num_hidden_layers):
        for name, module in BERT_TARGETS.items():
            d, k = dk.get(name, (h, h))
            shapes[_hf(i, module, "weight")] = (d, k)
            shapes[_hf(i, module, "bias")] = (d,)
        for module in _NORMS.values():
            shapes[_hf(i, module, "weight")] = (h,)
            shapes[_hf(i, module, "bias")] = (h,)
    return shapes


def random_bert_params(key: jax.Array, config: BertConfig) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face's names, as BERT initializes them.

    Weights and embeddings ``N(0, 0.02^2)``, biases 0, LayerNorm scales 1 (a small config of this
    stands in for the pretrained model in fast tests and ``--quick`` runs).

    Args:
      key: PRNG key (one ``fold_in`` per tensor, in name order).
      config: the shape.

    Returns:
      ``{name: np.ndarray}`` as :func:`~abo_jax.models.minilm.load_minilm` returns.
    """
    out = {}
    for i, (name, shape) in enumerate(sorted(_expected_shapes(config).items())):
        if name.endswith("LayerNorm.weight"):
            out[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        else:
            draw = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
            out[name] = np.array(0.02 * draw, np.float32)  # writable, as load_minilm's
    return out


def bert_frozen(
    config: BertConfig,
    params: Mapping[str, Any],
    *,
    num_layers: int | None = None,
    max_len: int | None = None,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """The encoder's weights as the nested tree the functions below read, checked and cast.

    Args:
      config: the shape.
      params: ``{Hugging Face name: array}`` (extra entries, e.g. the pooler, are ignored).
      num_layers: keep the first ``num_layers`` layers (default all).
      max_len: keep the first ``max_len`` position embeddings (default all).
      dtype: the dtype of every weight.

    Returns:
      ``{"embeddings": {"word": (V, h), "position": (L, h), "token_type": (h,), "norm":
      {"scale", "bias"}}, "layer_i": {"query": {"w": (d, k), "b": (d,)}, ..., "attention_norm",
      "ffn_norm"}}`` for ``i < num_layers``.
    """
    n = config.num_hidden_layers if num_layers is None else int(num_layers)
    if not 1 <= n <= config.num_hidden_layers:
        raise ValueError(f"num_layers must be in [1, {config.num_hidden_layers}], got {num_layers}")
    length = config.max_position_embeddings if max_len is None else int(max_len)
    if not 2 <= length <= config.max_position_embeddings:
        raise ValueError(f"max_len must be in [2, {config.max_position_embeddings}], got {max_len}")
    shapes = _expected_shapes(config)
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError(f"params: {len(missing)} tensors missing, e.g. {missing[:3]}")
    wrong = [(k, np.shape(params[k]), s) for k, s in shapes.items() if np.shape(params[k]) != s]
    if wrong:
        raise ValueError(
            f"params: shapes differ from the config (name, got, expected): {wrong[:3]}"
        )
    cast = lambda name: jnp.asarray(params[name], dtype)
    frozen: dict[str, Any] = {
        "embeddings": {
            "word": cast("embeddings.word_embeddings.weight"),
            "position": cast("embeddings.position_embeddings.weight")[:length],
            "token_type": cast("embeddings.token_type_embeddings.weight")[0],
            "norm": {
                "scale": cast("embeddings.LayerNorm.weight"),
                "bias": cast("embeddings.LayerNorm.bias"),
            },
        }
    }
    for i in range(n):
        layer = {
            name: {"w": cast(_hf(i, module, "weight")), "b": cast(_hf(i, module, "bias"))}
            for name, module in BERT_TARGETS.items()
        }
        for name, module in _NORMS.items():
            layer[name] = {
                "scale": cast(_hf(i, module, "weight")),
                "bias": cast(_hf(i, module, "bias")),
            }
        frozen[f"layer_{i}"] = layer
    return frozen


def _layer_norm(x: jax.Array, norm: Mapping[str, jax.Array], eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (biased variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * jnp.broadcast_to(norm["scale"], y.shape) + jnp.broadcast_to(norm["bias"], y.shape)


def bert_embed(embeddings: Mapping[str, Any], ids: jax.Array, *, eps: float) -> jax.Array:
    """Word + position + token-type-0 embeddings, LayerNorm: ``(b, L)`` ids to ``(b, L, h)``."""
    length = ids.shape[-1]
    if length > embeddings["position"].shape[0]:
        raise ValueError(
            f"inputs: sequences of length {length} exceed the model's max_len "
            f"{embeddings['position'].shape[0]}"
        )
    word = jnp.take(embeddings["word"], ids, axis=0)
    extra = embeddings["position"][:length] + embeddings["token_type"][None, :]
    return _layer_norm(word + jnp.broadcast_to(extra, word.shape), embeddings["norm"], eps)


def _project(x, weights, adapter: LoRAFactors | jax.Array | None, scale):
    w = adapter if (adapter is not None and not isinstance(adapter, LoRAFactors)) else weights["w"]
    y = x @ w.T + jnp.broadcast_to(weights["b"], (*x.shape[:-1], weights["b"].shape[0]))
    if not isinstance(adapter, LoRAFactors):
        return y
    return y + scale * ((x @ adapter.a.T) @ adapter.b.T)  # factored: W0 + s B A is never formed


def bert_layer(
    layer: Mapping[str, Any],
    h: jax.Array,
    mask: jax.Array,
    *,
    num_heads: int,
    eps: float,
    lora: Mapping[str, Any] | None = None,
    scale: Any = 1.0,
) -> jax.Array:
    """One post-LN encoder layer: masked self-attention, add & norm, GELU FFN, add & norm.

    Args:
      layer: one ``"layer_i"`` entry of :func:`bert_frozen`.
      h: ``(b, L, h)`` hidden states.
      mask: ``(b, L)`` bool, True for real tokens (keys outside it get no attention).
      num_heads: attention heads ``H`` (``h % H == 0``).
      eps: LayerNorm epsilon.
      lora: ``{projection: LoRAFactors}`` for the adapted projections of this layer (or None); a
        dense ``(d, k)`` array instead replaces that projection's ``W0`` (full-weight training).
      scale: the LoRA scale ``s``.

    Returns:
      ``(b, L, h)``.
    """
    lora = {} if lora is None else lora
    proj = lambda name, x: _project(x, layer[name], lora.get(name), scale)
    b, length, width = h.shape
    head_dim = width // num_heads
    split = lambda x: x.reshape(b, length, num_heads, head_dim)
    q, k, v = (split(proj(name, h)) for name in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    keep = jnp.broadcast_to(mask[:, None, None, :], scores.shape)
    scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    attended = proj("attention_output", context.reshape(b, length, width))
    h = _layer_norm(h + attended, layer["attention_norm"], eps)
    inner = jax.nn.gelu(proj("ffn_in", h), approximate=False)
    return _layer_norm(h + proj("ffn_out", inner), layer["ffn_norm"], eps)


def _layer_names(frozen: Mapping[str, Any]) -> list[str]:
    return sorted((k for k in frozen if k.startswith("layer_")), key=lambda k: int(k[6:]))


def bert_hidden_states(
    config: BertConfig,
    frozen: Mapping[str, Any],
    ids: jax.Array,
    *,
    lora: Mapping[str, Any] | None = None,
    scale: Any = 1.0,
) -> list[jax.Array]:
    """Every hidden state: the embeddings' and each layer's output (Hugging Face's
    ``output_hidden_states``).

    Args:
      config: the shape (heads, epsilon).
      frozen: from :func:`bert_frozen`.
      ids: ``(b, L)`` int token ids, pad 0 (the mask is ``ids != 0``).
      lora: ``{"layer_i": {projection: LoRAFactors}}`` (absent layers unadapted).
      scale: LoRA scale.

    Returns:
      ``num_layers + 1`` arrays ``(b, L, h)``.

    Example:
      >>> config = BertConfig(50, 32, 2, 4, 48, 16)
      >>> frozen = bert_frozen(config, random_bert_params(jax.random.key(0), config))
      >>> [h.shape for h in bert_hidden_states(config, frozen, jnp.ones((3, 5), jnp.int32))]
      [(3, 5, 32), (3, 5, 32), (3, 5, 32)]
    """
    lora = {} if lora is None else lora
    mask = ids != 0
    states = [bert_embed(frozen["embeddings"], ids, eps=config.layer_norm_eps)]
    for name in _layer_names(frozen):
        states.append(
            bert_layer(
                frozen[name],
                states[-1],
                mask,
                num_heads=config.num_attention_heads,
                eps=config.layer_norm_eps,
                lora=lora.get(name),
                scale=scale,
            )
        )
    return states


def mean_pool(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``h (b, L, h)`` over the real tokens of ``mask (b, L)``: ``(b, h)``.

    As Sentence-BERT: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``.
    """
    weights = mask.astype(h.dtype)
    total = jnp.einsum("bl,blh->bh", weights, h)
    count = jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-9)
    return total / jnp.broadcast_to(count, total.shape)


def _chunked(fn, x):
    """``fn`` over the leading axis in chunks of ``_CHUNK`` rows (one chunk when it fits)."""
    n = jax.tree.leaves(x)[0].shape[0]
    if n <= _CHUNK:
        return fn(x)
    return jax.lax.map(
        lambda row: jax.tree.map(lambda y: y[0], fn(jax.tree.map(lambda y: y[None], row))),
        x,
        batch_size=_CHUNK,
    )


def bert_lora_model(
    config: BertConfig,
    params: Mapping[str, Any],
    num_classes: int,
    *,
    ranks: int | Mapping[str, int] = 8,
    targets: tuple[str, ...] = ("query", "value"),
    lora_from_layer: int = 0,
    num_layers: int | None = None,
    max_len: int = 64,
    head: Literal["aggregated", "local"] = "aggregated",
    lora_init: Literal["kaiming", "gaussian"] = "kaiming",
    mode: Literal["lora", "full"] = "lora",
    dtype: Any = jnp.float32,
) -> Model:
    r"""A pretrained BERT encoder with factored LoRA and a classification head, as a Model.

    Logits are ``head(mean_pool(encoder(ids)))``: the encoder's weights are frozen; the layers
    ``i >= lora_from_layer`` carry LoRA factors on ``targets``
    (``y = x @ W0.T + b0 + s ((x @ A.T) @ B.T)``, peft's init: ``B = 0``, so the model starts as
    the pretrained encoder), and a linear head ``(num_classes, h)`` on the mean-pooled embedding
    trains with them (``N(0, 0.02^2)`` weights, zero bias, as Hugging Face's sequence classifier).
    No dropout (deterministic local training). With ``lora_from_layer = L > 0``, ``prepare``
    runs the embeddings and layers ``< L`` once per example (``Model.caches``), and ``apply``
    runs only the layers ``>= L`` from the cached hidden states: the same numbers as the full
    forward, since nothing below ``L`` trains.

    Args:
      config: the encoder's shape (:func:`~abo_jax.models.minilm.load_minilm`).
      params: its weights, ``{Hugging Face name: (d, k) array}``.
      num_classes: classes of the head.
      ranks: one LoRA rank for every target, or ``{target: rank}``.
      targets: adapted projections of each layer, among ``"query"``, ``"key"``, ``"value"``,
        ``"attention_output"``, ``"ffn_in"``, ``"ffn_out"`` (Hugging Face's
        ``attention.self.{query,key,value}``, ``attention.output.dense``,
        ``intermediate.dense``, ``output.dense``). Default query and value, as LoRA's paper.
      lora_from_layer: the first adapted layer ``L`` (``0 <= L < num_layers``).
      num_layers: use only the first ``num_layers`` pretrained layers (default all).
      max_len: the sequence length ``L_seq`` inputs may have (position embeddings kept).
      head: ``"aggregated"``: the head is part of ``Trainable.extra`` and the operator averages
        it (FedAvg) like every dense leaf. ``"local"`` (a head kept per client, never averaged)
        is not supported yet: the round has no field for a per-client part of the trainable tree.
      lora_init: ``A`` init (see :func:`abo_jax.init_lora`).
      mode: ``"lora"``; or ``"full"``: the same projections train their dense weights
        themselves (``Trainable.lora`` holds ``{target: W (d, k)}``, starting from the pretrained
        ``W0``), the reference for full-weight FedAvg (:func:`~abo_jax.fedavg_full`) of the same
        trainable set; ``ranks`` and ``lora_init`` are then unused, and memory per client grows
        with those dense weights.
      dtype: the dtype of every weight and factor (the pretrained weights are float32).

    Returns:
      A :class:`~abo_jax.models.Model`; its inputs ``x`` are ``(n, L_seq)`` int32 token ids (pad
      0). ``frozen`` is :func:`bert_frozen`'s tree (shared by every client: no client axis);
      ``trainable = Trainable(lora={"layer_i": {target: LoRAFactors}}, extra={"head": {"weight":
      (C, h), "bias": (C,)}})`` for the adapted layers ``i``.

    Example:
      >>> config = BertConfig(50, 32, 2, 4, 48, 16)
      >>> params = random_bert_params(jax.random.key(0), config)
      >>> model = bert_lora_model(config, params, 3, ranks=2, lora_from_layer=1, max_len=8)
      >>> frozen, trainable = model.init(jax.random.key(1))
      >>> ids = jnp.array([[1, 7, 9, 2, 0, 0, 0, 0]], jnp.int32)  # ids < vocab_size, pad 0
      >>> model.apply(frozen, trainable, model.prepare(frozen, ids), 1.0).shape
      (1, 3)
    """
    if head == "local":
        raise NotImplementedError(
            "head='local' is not supported yet: the federated round has no declared field for a "
            "part of Trainable.extra kept per client (every extra leaf is averaged by the "
            "operator); use head='aggregated', or an operator that personalizes the whole "
            "model (fedsa)"
        )
    if head != "aggregated":
        raise ValueError(f"head must be 'aggregated' or 'local', got {head!r}")
    if lora_init not in ("kaiming", "gaussian"):
        raise ValueError(f"lora_init must be 'kaiming' or 'gaussian', got {lora_init!r}")
    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    targets = tuple(targets)
    unknown = [t for t in targets if t not in BERT_TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(
            f"targets: expected distinct names among {list(BERT_TARGETS)}, got {list(targets)}"
        )
    rank_of = {t: int(ranks) for t in targets} if isinstance(ranks, int) else dict(ranks)
    if set(rank_of) != set(targets):
        raise ValueError(f"ranks: expected one rank per target {list(targets)}, got {rank_of}")
    frozen = bert_frozen(config, params, num_layers=num_layers, max_len=max_len, dtype=dtype)
    layers = _layer_names(frozen)
    start = int(lora_from_layer)
    if not 0 <= start < len(layers):
        raise ValueError(f"lora_from_layer must be in [0, {len(layers)}), got {lora_from_layer}")
    adapted, below = layers[start:], layers[:start]
    for t in targets:
        d, k = frozen[layers[0]][t]["w"].shape
        if mode == "lora" and not 1 <= rank_of[t] <= min(d, k):
            raise ValueError(
                f"ranks: {t} is ({d}, {k}), so 1 <= r <= {min(d, k)}; got {rank_of[t]}"
            )
    caches = start > 0
    num_classes, width = int(num_classes), config.hidden_size
    layer_kw = dict(num_heads=config.num_attention_heads, eps=config.layer_norm_eps)

    def init(key):
        k_head, k_lora = jax.random.split(key)
        lora = {}
        for i, name in enumerate(adapted):
            lora[name] = {}
            for j, t in enumerate(targets):
                if mode == "full":
                    lora[name][t] = frozen[name][t]["w"]
                    continue
                d, k = frozen[name][t]["w"].shape
                lora[name][t] = init_lora(
                    jax.random.fold_in(k_lora, i * len(targets) + j),
                    d,
                    k,
                    rank_of[t],
                    init=lora_init,
                    dtype=dtype,
                )
        weight = 0.02 * jax.random.normal(k_head, (num_classes, width), dtype)
        extra = {"head": {"weight": weight, "bias": jnp.zeros((num_classes,), dtype)}}
        return frozen, Trainable(lora=lora, extra=extra)

    def check_ids(x):
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"inputs: expected (n, L) integer token ids, got shape {x.shape} of {x.dtype}"
            )
        if x.shape[1] > int(max_len):
            raise ValueError(f"inputs: sequences of length {x.shape[1]} exceed max_len {max_len}")

    def run_below(frz, ids):
        h = bert_embed(frz["embeddings"], ids, eps=config.layer_norm_eps)
        mask = ids != 0
        for name in below:
            h = bert_layer(frz[name], h, mask, **layer_kw)
        return {"h": h, "mask": mask}

    def prepare(frz, x):
        check_ids(x)
        if not caches:
            return x
        return _chunked(lambda ids: run_below(frz, ids), x)

    def forward(frz, trainable, inputs, scale):
        if caches:
            h, mask = inputs["h"], inputs["mask"]
        else:
            h = bert_embed(frz["embeddings"], inputs, eps=config.layer_norm_eps)
            mask = inputs != 0
        for name in adapted:
            h = bert_layer(frz[name], h, mask, lora=trainable.lora[name], scale=scale, **layer_kw)
        pooled = mean_pool(h, mask)
        w = trainable.extra["head"]
        return pooled @ w["weight"].T + jnp.broadcast_to(w["bias"], (pooled.shape[0], num_classes))

    def apply(frz, trainable, inputs, scale):
        if caches:
            if not isinstance(inputs, Mapping) or set(inputs) != {"h", "mask"}:
                raise ValueError("inputs: expected prepare's {'h', 'mask'}; call prepare first")
        else:
            check_ids(inputs)
        return _chunked(lambda rows: forward(frz, trainable, rows, scale), inputs)

    def fold(frz, base_delta):
        if base_delta is None:
            return frz
        if mode == "full":
            raise ValueError(
                "fold: a full-weight model trains its weights; there is no base to correct"
            )
        out = dict(frz)
        for name, per_target in base_delta.items():
            if per_target is None:
                continue
            if name not in adapted:
                raise ValueError(f"fold: {name!r} is not an adapted layer ({adapted})")
            layer = dict(out[name])
            for t, delta in per_target.items():
                if delta is None:
                    continue
                w = layer[t]["w"]
                if delta.shape != w.shape:
                    raise ValueError(
                        f"fold: correction of shape {delta.shape} for {name}.{t}, whose weight "
                        f"is {w.shape} (peft orientation (d, k))"
                    )
                layer[t] = {**layer[t], "w": w + delta.astype(w.dtype)}
            out[name] = layer
        return out

    return Model(init=init, apply=apply, prepare=prepare, fold=fold, caches=caches)
