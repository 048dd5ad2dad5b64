"""The model interface the simulator trains: frozen and trainable pytrees kept apart.

A :class:`Model` is a NamedTuple of pure functions (like optax's ``GradientTransformation``). The
simulator differentiates only the :class:`Trainable` tree and counts only it as communication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from abo_jax.lora import is_lora

__all__ = ["Trainable", "Model", "fold_base_delta"]


class Trainable(NamedTuple):
    """The trainable (and communicated) part of a model.

    Attributes:
      lora: what the aggregation-broadcast operator (ABO) sees: a pytree with
        :class:`~abo_jax.LoRAFactors` nodes (``None`` where frozen); for full-weight FedAvg the
        dense weights themselves.
      extra: other trainable leaves (biases, heads), averaged by the server with the plain weighted
        mean ``sum_i p_i x_i``; ``None`` leaves are frozen positions.
    """

    lora: Any  # pytree of LoRAFactors (b (..., d, r), a (..., r, k)) or dense (..., d, k) weights
    extra: Any  # pytree of arrays (biases), or an empty container


class Model(NamedTuple):
    """A model the simulator can train with LoRA (or with full weights).

    Attributes:
      init: ``init(key) -> (frozen, trainable)`` for ONE client (no client axis).
      apply: ``apply(frozen, trainable, inputs, scale) -> logits (b, classes)``; ``inputs`` is what
        :attr:`prepare` returned, sliced to a batch along its leading axis; ``scale`` is the LoRA
        scale ``s`` (a scalar, possibly traced).
      prepare: ``prepare(frozen, x) -> inputs``: per-example work that depends only on the data and
        the frozen weights (e.g. the first layer's ``x @ W0.T``), so it can be done once and reused
        every step; the identity for models that cache nothing. ``x`` is ``(n, ...)``; every leaf of
        ``inputs`` has the same leading axis ``n``.
      fold: ``fold(frozen, base_delta) -> frozen``: adds an ABO's dense correction (a pytree like
        ``trainable.lora`` with ``(d, k)`` arrays in peft orientation, scale applied, ``None`` where
        absent) to the frozen weights in their own layout.
      caches: True when :attr:`prepare` depends on ``frozen`` (it must be redone after a fold).
    """

    init: Callable[[jax.Array], tuple[Any, Trainable]]
    apply: Callable[[Any, Trainable, Any, Any], jax.Array]
    prepare: Callable[[Any, jax.Array], Any]
    fold: Callable[[Any, Any], Any]
    caches: bool = False


def fold_base_delta(params: Any, base_delta: Any, *, kernel_layout: str = "in_out") -> Any:
    """``W0 + delta`` for every weight of ``params`` that ``base_delta`` corrects.

    Args:
      params: parameter pytree (frozen base).
      base_delta: pytree with the structure of the LoRA tree (a prefix of ``params``' structure):
        ``(d, k)`` arrays (peft orientation) where a correction applies, ``None`` elsewhere; or
        ``None`` for no correction at all.
      kernel_layout: ``"in_out"`` (flax kernels ``(k, d)``: the delta is transposed) or
        ``"out_in"`` (``(d, k)`` weights).

    Returns:
      ``params`` with corrected weights, each in its own layout and dtype.
    """
    if base_delta is None:
        return params
    if kernel_layout not in ("in_out", "out_in"):
        raise ValueError(f"kernel_layout must be 'out_in' or 'in_out', got {kernel_layout!r}")
    is_node = lambda x: x is None or is_lora(x) or hasattr(x, "ndim")
    deltas, treedef = jax.tree.flatten(base_delta, is_leaf=is_node)
    weights = treedef.flatten_up_to(params)
    out = []
    for delta, w in zip(deltas, weights, strict=True):
        if delta is None or is_lora(delta):
            out.append(w)
            continue
        delta = delta if kernel_layout == "out_in" else delta.T
        if delta.shape != w.shape:
            raise ValueError(
                f"base_delta: correction of shape {delta.shape} (after layout {kernel_layout!r}) "
                f"does not match the frozen weight of shape {w.shape}"
            )
        out.append(w + delta.astype(w.dtype))
    return jax.tree.unflatten(treedef, out)
