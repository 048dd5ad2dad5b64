"""Any flax model with LoRA through the spec pytree (``lora_spec`` / ``init_lora_tree``).

Reference: Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax

from abo_jax.lora import init_lora_tree, merge_lora_tree
from abo_jax.models._base import Model, Trainable, fold_base_delta

__all__ = ["flax_lora_model", "bias_leaves"]


def bias_leaves(path: tuple, leaf: Any) -> bool:
    """``where`` for :func:`flax_lora_model`'s ``train_extra``: every leaf named ``bias``."""
    del leaf
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "bias"


def _combine(params: Any, extra: Any) -> Any:
    """``params`` with the trainable ``extra`` leaves (``None`` = keep ``params``) substituted."""
    return jax.tree.map(
        lambda e, p: p if e is None else e, extra, params, is_leaf=lambda x: x is None
    )


def flax_lora_model(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    spec: Any,
    *,
    train_extra: Callable[[tuple, Any], bool] | None = bias_leaves,
    kernel_layout: Literal["in_out", "out_in"] = "in_out",
    lora_init: Literal["kaiming", "gaussian"] = "kaiming",
) -> Model:
    """Wraps a (pre-trained) flax model as a LoRA :class:`Model` for the simulator.

    The frozen tree is ``params``; the trainable tree holds LoRA factors for the weights chosen by
    ``spec`` (from :func:`abo_jax.lora.lora_spec`) and the leaves chosen by ``train_extra`` (biases by
    default), which the server averages. The forward pass merges ``W0 + s B A`` into a copy of
    each adapted kernel (``merge_lora_tree``) and calls ``apply_fn``; gradients reach only ``B``,
    ``A`` and the extras. (The paper's MLP, :func:`paper_mlp`, never merges; a generic flax module
    offers no hook for the factored form.)

    Args:
      apply_fn: ``apply_fn(params, x) -> logits (b, classes)``, e.g.
        ``lambda p, x: module.apply({"params": p}, x)``.
      params: the base parameters (flax ``params`` collection), kept frozen.
      spec: a pytree mirroring ``params`` with a rank where LoRA applies and ``None`` elsewhere.
      train_extra: ``fn(path, leaf) -> bool`` choosing non-LoRA leaves to train (``None``: none).
      kernel_layout: ``"in_out"`` for flax ``Dense`` kernels ``(k, d)``.
      lora_init: ``A`` init (see :func:`abo_jax.init_lora`); ``B = 0`` so the model starts as the
        base model.

    Returns:
      A :class:`Model`; ``init(key)`` draws the LoRA ``A`` factors from ``key``.

    Example:
      >>> import flax.linen as nn
      >>> net = nn.Dense(3)
      >>> params = net.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> model = flax_lora_model(lambda p, x: net.apply({"params": p}, x), params,
      ...                         lora_spec(params, 2))
      >>> frozen, trainable = model.init(jax.random.key(1))
      >>> trainable.lora["kernel"].b.shape
      (3, 2)
    """
    if train_extra is None:
        extra_mask = jax.tree.map(lambda _: False, params)
    else:
        extra_mask = jax.tree_util.tree_map_with_path(lambda p, x: bool(train_extra(p, x)), params)
    lora_where = jax.tree.map(lambda r: r is not None, spec, is_leaf=lambda x: x is None)
    clash = jax.tree.leaves(jax.tree.map(lambda a, b: a and b, extra_mask, lora_where))
    if any(clash):
        raise ValueError("train_extra: selects a weight that spec adapts with LoRA")

    def init(key):
        lora = init_lora_tree(key, params, spec, kernel_layout=kernel_layout, init=lora_init)
        extra = jax.tree.map(lambda use, p: p if use else None, extra_mask, params)
        return params, Trainable(lora=lora, extra=extra)

    def apply(frozen, trainable, inputs, scale):
        merged = merge_lora_tree(
            _combine(frozen, trainable.extra), trainable.lora, scale, kernel_layout=kernel_layout
        )
        return apply_fn(merged, inputs)

    def fold(frozen, base_delta):
        return fold_base_delta(frozen, base_delta, kernel_layout=kernel_layout)

    return Model(init=init, apply=apply, prepare=lambda frozen, x: x, fold=fold, caches=False)
