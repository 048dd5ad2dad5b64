"""The paper's MLP: 784-200-200-10 ReLU, LoRA on all three linear layers over a frozen random base.

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348 (Sec. experiments: MLP, scale 1, biases trainable and averaged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from abo_jax.lora import LoRAFactors
from abo_jax.models._base import Model, Trainable, fold_base_delta

__all__ = ["paper_mlp", "paper_mlp_ranks"]


def paper_mlp_ranks(delta: float, hidden: int = 160, last: int = 100) -> tuple[int, int, int]:
    """The paper's ranks for rank ratio ``delta``: ``int(160 delta)`` twice, ``int(100 delta)``, >= 1.

    Example:
      >>> paper_mlp_ranks(0.07)
      (11, 11, 7)
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    r_hidden = max(1, math.floor(hidden * delta + 1e-9))
    r_last = max(1, math.floor(last * delta + 1e-9))
    return (r_hidden, r_hidden, r_last)


def _layer_names(n: int) -> list[str]:
    return [f"dense_{i}" for i in range(n)]


def paper_mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (200, 200),
    num_classes: int = 10,
    *,
    ranks: int | Sequence[int] = 1,
    mode: Literal["lora", "full"] = "lora",
    cache_first_layer: bool = True,
    lora_init: Literal["kaiming", "gaussian"] = "kaiming",
    dtype: Any = jnp.float32,
) -> Model:
    r"""The paper's ReLU MLP with LoRA on every linear layer (arXiv:2508.01348).

    Layer ``l`` (``dense_l``, peft orientation ``W0 (d, k)``) computes
    ``h @ W0.T + s ((h @ A.T) @ B.T) + bias``; the forward pass never forms ``W0 + s B A``. The base
    is random and frozen (PyTorch ``nn.Linear`` init: weights and biases
    ``U(-1/sqrt(k), 1/sqrt(k))``), the LoRA factors are initialized as peft (``B = 0``), and the
    biases are trainable (``Trainable.extra``, averaged by the server). Inputs of any shape
    ``(n, ...)`` are flattened to ``(n, in_features)``.

    Args:
      in_features: input size (784 for 28x28 images, 64 for scikit-learn digits).
      hidden: hidden widths.
      num_classes: output size.
      ranks: one rank for every layer, or one per layer (e.g. :func:`paper_mlp_ranks`).
      mode: ``"lora"``: train LoRA factors over the frozen base; ``"full"``: train the dense
        weights themselves (``Trainable.lora`` holds ``(d, k)`` weights, ``frozen`` is empty), the
        reference for full-weight FedAvg with the same random base.
      cache_first_layer: ``prepare`` computes the first layer's frozen part ``x @ W0.T`` once per
        example (about 80% of the forward FLOPs of the 784-200-200-10 MLP); ``apply`` then reads it
        from ``inputs["h0"]``. Ignored in ``"full"`` mode.
      lora_init: ``A`` init (see :func:`abo_jax.init_lora`).
      dtype: parameter dtype.

    Returns:
      A :class:`Model`. ``frozen = {"dense_l": W0 (d, k)}``,
      ``trainable = Trainable(lora={"dense_l": LoRAFactors}, extra={"dense_l": bias (d,)})``.

    Example:
      >>> model = paper_mlp(64, (32, 32), 10, ranks=2)
      >>> frozen, trainable = model.init(jax.random.key(0))
      >>> x = jnp.ones((5, 8, 8))
      >>> model.apply(frozen, trainable, model.prepare(frozen, x), 1.0).shape
      (5, 10)
    """
    sizes = [int(in_features), *[int(h) for h in hidden], int(num_classes)]
    names = _layer_names(len(sizes) - 1)
    if any(s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be positive, got {sizes}")
    if lora_init not in ("kaiming", "gaussian"):
        raise ValueError(f"lora_init must be 'kaiming' or 'gaussian', got {lora_init!r}")
    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    rank_list = [int(ranks)] * len(names) if isinstance(ranks, int) else [int(r) for r in ranks]
    if len(rank_list) != len(names):
        raise ValueError(f"ranks: expected one rank per layer ({len(names)}), got {rank_list}")
    for name, r, k, d in zip(names, rank_list, sizes[:-1], sizes[1:], strict=True):
        if mode == "lora" and not 1 <= r <= min(d, k):
            raise ValueError(f"ranks: {name} is ({d}, {k}), so 1 <= r <= {min(d, k)}; got {r}")
    cache = bool(cache_first_layer) and mode == "lora"

    # (name, kind, shape, bound) of every uniform draw; the base comes first so that "lora" and
    # "full" models from the same key share the same random base.
    shapes = []
    for name, k, d in zip(names, sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / math.sqrt(k)
        shapes += [(name, "w", (d, k), bound), (name, "bias", (d,), bound)]
    if mode == "lora" and lora_init == "kaiming":
        for name, r, k in zip(names, rank_list, sizes[:-1], strict=True):
            shapes.append((name, "a", (r, k), 1.0 / math.sqrt(k)))
    total = sum(math.prod(shape) for _, _, shape, _ in shapes)

    def init(key):
        # One uniform draw sliced into every tensor: one PRNG kernel to compile, not one per tensor.
        k_uniform, k_normal = jax.random.split(key)
        flat = jax.random.uniform(k_uniform, (total,), dtype, -1.0, 1.0)
        drawn, offset = {}, 0
        for name, kind, shape, bound in shapes:
            size = math.prod(shape)
            drawn[name, kind] = bound * flat[offset : offset + size].reshape(shape)
            offset += size
        weights = {name: drawn[name, "w"] for name in names}
        biases = {name: drawn[name, "bias"] for name in names}
        if mode == "full":
            return {}, Trainable(lora=weights, extra=biases)
        factors = {}
        for i, (name, r, d) in enumerate(zip(names, rank_list, sizes[1:], strict=True)):
            if lora_init == "kaiming":
                a = drawn[name, "a"]
            else:  # peft's gaussian init, std 1/r
                a = jax.random.normal(jax.random.fold_in(k_normal, i), (r, sizes[i]), dtype) / r
            factors[name] = LoRAFactors(b=jnp.zeros((d, r), dtype), a=a)
        return weights, Trainable(lora=factors, extra=biases)

    def prepare(frozen, x):
        x = jnp.reshape(x, (x.shape[0], -1))
        if x.shape[-1] != sizes[0]:
            raise ValueError(
                f"inputs: the MLP expects {sizes[0]} features per example, got {x.shape[-1]} "
                f"(x of shape {x.shape})"
            )
        if cache:
            return {"x": x, "h0": x @ frozen[names[0]].T}
        return x

    def apply(frozen, trainable, inputs, scale):
        if cache:
            x, h0 = inputs["x"], inputs["h0"]
        else:
            x, h0 = inputs, None
        if x.shape[-1] != sizes[0]:
            raise ValueError(f"inputs: expected (b, {sizes[0]}), got {x.shape}; call prepare first")
        h = x
        for i, name in enumerate(names):
            bias = trainable.extra[name]
            if mode == "full":
                z = h @ trainable.lora[name].T
            else:
                f: LoRAFactors = trainable.lora[name]
                base = h0 if (i == 0 and h0 is not None) else h @ frozen[name].T
                z = base + scale * ((h @ f.a.T) @ f.b.T)
            h = z + bias[None, :]
            if i < len(names) - 1:
                h = jax.nn.relu(h)
        return h

    def fold(frozen, base_delta):
        if mode == "full" and base_delta is not None:
            raise ValueError("fold: a full-weight model has no frozen base to correct")
        return fold_base_delta(frozen, base_delta, kernel_layout="out_in")

    return Model(init=init, apply=apply, prepare=prepare, fold=fold, caches=cache)
