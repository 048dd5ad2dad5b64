"""LoRA factors as pure-function pytrees.

Conventions (peft orientation, see DESIGN.md): a frozen base weight ``W0`` of shape ``(d, k)``
(d = out, k = in) is adapted by ``B`` ``(d, r)`` and ``A`` ``(r, k)``::

    y = x @ W0.T + s * ((x @ A.T) @ B.T),    s = alpha / r   (rsLoRA: alpha / sqrt(r))

The forward pass never forms ``W0 + s B A``. Flax ``nn.Dense`` / ``nnx.Linear`` kernels are stored
``(k, d)`` ("in_out" layout); the tree helpers take ``kernel_layout`` so that the orientation is never
guessed.

References:
  Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685.
  Kalajdzievski, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA, arXiv:2312.03732.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "LoRAFactors",
    "init_lora",
    "apply_lora",
    "lora_delta",
    "merge_lora",
    "lora_scale",
    "lora_spec",
    "init_lora_tree",
    "merge_lora_tree",
    "add_delta_tree",
    "is_lora",
    "map_lora",
    "lora_leaves",
    "to_nnx_lora",
    "from_nnx_lora",
    "rank_mask",
    "mask_rank",
]

Layout = Literal["out_in", "in_out"]


class LoRAFactors(NamedTuple):
    """Low-rank factors of one adapted weight.

    Attributes:
      b: ``(..., d, r)`` the "up" factor ``B`` (peft ``lora_B.weight``).
      a: ``(..., r, k)`` the "down" factor ``A`` (peft ``lora_A.weight``).

    Leading axes (clients, seeds, ...) are shared by ``b`` and ``a``.
    """

    b: jax.Array  # (..., d, r)
    a: jax.Array  # (..., r, k)

    @property
    def rank(self) -> int:
        return self.a.shape[-2]

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(d, k)`` shape of the adapted weight."""
        return (self.b.shape[-2], self.a.shape[-1])


def is_lora(x: Any) -> bool:
    """True for a :class:`LoRAFactors` node (use as ``is_leaf`` in tree maps)."""
    return isinstance(x, LoRAFactors)


def map_lora(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Maps ``fn`` over the :class:`LoRAFactors` nodes of ``tree`` (and matching nodes of ``rest``).

    Frozen positions (``None``) stay ``None``.
    """
    return jax.tree.map(fn, tree, *rest, is_leaf=is_lora)


def lora_leaves(tree: Any) -> list[LoRAFactors]:
    """The :class:`LoRAFactors` nodes of ``tree`` in tree order."""
    return [x for x in jax.tree.leaves(tree, is_leaf=is_lora) if is_lora(x)]


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """The LoRA scale ``alpha / r`` (or rsLoRA ``alpha / sqrt(r)``).

    The paper's experiments (arXiv:2508.01348) use scale 1, i.e. ``alpha = r``.

    Example:
      >>> lora_scale(16.0, 8)
      2.0
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


def init_lora(
    key: jax.Array,
    d: int,
    k: int,
    rank: int,
    *,
    init: Literal["kaiming", "gaussian"] = "kaiming",
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> LoRAFactors:
    """Initializes factors for a ``(d, k)`` weight as peft does: ``B = 0``, random ``A``.

    Args:
      key: PRNG key.
      d: output dimension of the adapted weight.
      k: input dimension of the adapted weight.
      rank: ``r``, with ``1 <= r <= min(d, k)``.
      init: ``"kaiming"``: ``A ~ U(-1/sqrt(k), 1/sqrt(k))`` (peft's ``kaiming_uniform_(a=sqrt(5))``);
        ``"gaussian"``: ``A ~ N(0, std^2)`` with ``std = 1/r`` by default (peft's gaussian init).
      std: standard deviation for ``"gaussian"``.
      dtype: dtype of both factors.

    Returns:
      ``LoRAFactors(b=(d, r) zeros, a=(r, k))``.

    Example:
      >>> f = init_lora(jax.random.key(0), 6, 4, 2)
      >>> f.b.shape, f.a.shape
      ((6, 2), (2, 4))
    """
    if not 1 <= rank <= min(d, k):
        raise ValueError(f"rank must satisfy 1 <= rank <= min(d, k) = {min(d, k)}, got {rank}")
    if init == "kaiming":
        bound = 1.0 / math.sqrt(k)
        a = jax.random.uniform(key, (rank, k), dtype, -bound, bound)
    elif init == "gaussian":
        sigma = (1.0 / rank) if std is None else std
        a = sigma * jax.random.normal(key, (rank, k), dtype)
    else:
        raise ValueError(f"init must be 'kaiming' or 'gaussian', got {init!r}")
    return LoRAFactors(b=jnp.zeros((d, rank), dtype), a=a)


def apply_lora(
    x: jax.Array,
    w0: jax.Array,
    factors: LoRAFactors,
    scale: float | jax.Array = 1.0,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Adapted linear layer ``x @ W0.T + s ((x @ A.T) @ B.T) (+ bias)``, never forming ``B A``.

    Args:
      x: ``(..., k)`` inputs.
      w0: ``(d, k)`` frozen base weight (peft orientation).
      factors: ``b (d, r)``, ``a (r, k)``.
      scale: ``s``.
      bias: optional ``(d,)``.

    Returns:
      ``(..., d)``.
    """
    y = x @ w0.T + scale * ((x @ factors.a.T) @ factors.b.T)
    return y if bias is None else y + jnp.broadcast_to(bias, y.shape)


def lora_delta(factors: LoRAFactors, scale: float | jax.Array = 1.0) -> jax.Array:
    """The dense update ``s B A`` of shape ``(..., d, k)`` (for merging and checks, not the forward)."""
    return scale * (factors.b @ factors.a)


def merge_lora(w0: jax.Array, factors: LoRAFactors, scale: float | jax.Array = 1.0) -> jax.Array:
    """``W0 + s B A`` with ``W0`` of shape ``(d, k)``."""
    return w0 + lora_delta(factors, scale).astype(w0.dtype)


def _default_where(path: tuple, leaf: Any) -> bool:
    del path
    return hasattr(leaf, "ndim") and leaf.ndim == 2


def lora_spec(
    params: Any,
    rank: int | Callable[[tuple, Any], int | None],
    *,
    where: Callable[[tuple, Any], bool] = _default_where,
) -> Any:
    """A spec pytree mirroring ``params``: a rank for each adapted weight, ``None`` where frozen.

    Args:
      params: any parameter pytree (e.g. flax params).
      rank: one rank for every adapted weight, or ``fn(path, leaf) -> rank | None``.
      where: ``fn(path, leaf) -> bool`` choosing the adapted weights (default: every 2-D leaf).

    Returns:
      A pytree with the structure of ``params`` and ``int | None`` leaves.

    Example:
      >>> params = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
      >>> lora_spec(params, 2)
      {'dense': {'bias': None, 'kernel': 2}}
    """

    def choose(path, leaf):
        if not where(path, leaf):
            return None
        return rank(path, leaf) if callable(rank) else int(rank)

    return jax.tree_util.tree_map_with_path(choose, params)


def _dk(leaf: Any, layout: Layout) -> tuple[int, int]:
    if leaf.ndim != 2:
        raise ValueError(f"LoRA adapts 2-D weights only, got shape {leaf.shape}")
    if layout == "out_in":
        return leaf.shape[0], leaf.shape[1]
    if layout == "in_out":
        return leaf.shape[1], leaf.shape[0]
    raise ValueError(f"kernel_layout must be 'out_in' or 'in_out', got {layout!r}")


def init_lora_tree(
    key: jax.Array,
    params: Any,
    spec: Any,
    *,
    kernel_layout: Layout = "in_out",
    init: Literal["kaiming", "gaussian"] = "kaiming",
    dtype: Any = None,
) -> Any:
    """LoRA state for a whole model: a pytree like ``spec`` with :class:`LoRAFactors` at ranks.

    Args:
      key: PRNG key; each adapted weight gets ``fold_in(key, index)``.
      params: parameter pytree.
      spec: pytree from :func:`lora_spec` (``None`` = frozen).
      kernel_layout: ``"in_out"`` for flax kernels ``(k, d)``, ``"out_in"`` for ``(d, k)`` weights.
      init: see :func:`init_lora`.
      dtype: factor dtype (default: the weight's dtype).

    Returns:
      A pytree with ``None`` where frozen and ``LoRAFactors`` (``b (d, r)``, ``a (r, k)``) elsewhere.
    """
    leaves, treedef = jax.tree.flatten(spec, is_leaf=lambda x: x is None)
    param_leaves = treedef.flatten_up_to(params)
    out = []
    for i, (r, w) in enumerate(zip(leaves, param_leaves, strict=True)):
        if r is None:
            out.append(None)
            continue
        d, k = _dk(w, kernel_layout)
        out.append(
            init_lora(jax.random.fold_in(key, i), d, k, int(r), init=init, dtype=dtype or w.dtype)
        )
    return jax.tree.unflatten(treedef, out)


def merge_lora_tree(
    params: Any,
    lora: Any,
    scale: float | Any = 1.0,
    *,
    kernel_layout: Layout = "in_out",
) -> Any:
    """Folds every ``s B A`` of ``lora`` into the matching weight of ``params``.

    Args:
      params: parameter pytree.
      lora: pytree from :func:`init_lora_tree` (``None`` = frozen).
      scale: one scale, or a pytree like ``lora`` of scales.
      kernel_layout: orientation of the weights in ``params`` (see :func:`init_lora_tree`).

    Returns:
      ``params`` with adapted weights replaced by ``W0 + s B A`` in their own layout.
    """
    is_none = lambda x: x is None or is_lora(x)
    lora_nodes, treedef = jax.tree.flatten(lora, is_leaf=is_none)
    param_leaves = treedef.flatten_up_to(params)
    if isinstance(scale, (int, float)) or (hasattr(scale, "ndim") and scale.ndim == 0):
        scales = [scale] * len(lora_nodes)
    else:
        scales = treedef.flatten_up_to(scale)
    out = []
    for f, w, s in zip(lora_nodes, param_leaves, scales, strict=True):
        if f is None:
            out.append(w)
            continue
        _dk(w, kernel_layout)  # validates the layout name and 2-D weights
        delta = lora_delta(f, s)
        out.append(w + (delta if kernel_layout == "out_in" else delta.T).astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def add_delta_tree(params: Any, delta: Any, *, kernel_layout: Layout = "in_out") -> Any:
    """Adds dense ``(d, k)`` corrections (an ABO's ``broadcast.base_delta``) to the frozen weights.

    Args:
      params: parameter pytree.
      delta: ``None``, or a pytree mirroring ``params`` with ``(d, k)`` arrays (peft orientation,
        already scaled) at adapted weights and ``None`` elsewhere.
      kernel_layout: orientation of the weights in ``params``; ``"in_out"`` adds ``delta.T``.

    Returns:
      ``params`` with ``W0 + delta`` at the adapted weights.
    """
    if delta is None:
        return params
    nodes, treedef = jax.tree.flatten(delta, is_leaf=lambda x: x is None)
    param_leaves = treedef.flatten_up_to(params)
    out = []
    for dl, w in zip(nodes, param_leaves, strict=True):
        if dl is None:
            out.append(w)
            continue
        d, k = _dk(w, kernel_layout)
        if dl.shape != (d, k):
            raise ValueError(
                f"delta: expected shape ({d}, {k}) for weight {w.shape}, got {dl.shape}"
            )
        out.append(w + (dl if kernel_layout == "out_in" else dl.T).astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def to_nnx_lora(factors: LoRAFactors) -> tuple[jax.Array, jax.Array]:
    """Converts to flax ``nnx.LoRA`` layout: ``lora_a = A.T`` ``(k, r)``, ``lora_b = B.T`` ``(r, d)``.

    ``nnx.LoRA`` applies no scale (``y = x @ lora_a @ lora_b``): fold ``s`` into ``b`` first if needed.
    """
    return jnp.swapaxes(factors.a, -1, -2), jnp.swapaxes(factors.b, -1, -2)


def from_nnx_lora(lora_a: jax.Array, lora_b: jax.Array) -> LoRAFactors:
    """Inverse of :func:`to_nnx_lora`: ``lora_a (k, r)``, ``lora_b (r, d)`` to ``LoRAFactors``."""
    if lora_a.shape[-1] != lora_b.shape[-2]:
        raise ValueError(
            f"rank mismatch: lora_a {lora_a.shape} has rank {lora_a.shape[-1]}, "
            f"lora_b {lora_b.shape} has rank {lora_b.shape[-2]}"
        )
    return LoRAFactors(b=jnp.swapaxes(lora_b, -1, -2), a=jnp.swapaxes(lora_a, -1, -2))


def rank_mask(ranks: jax.Array, r_max: int) -> jax.Array:
    """``(..., r_max)`` bool mask, True for the first ``ranks[...]`` rank components.

    Heterogeneous ranks (HetLoRA, RBLA, FlexLoRA) pad every client to ``r_max``; component ``j`` of
    client ``i`` is live when ``j < r_i``.
    """
    ranks = jnp.asarray(ranks)
    # Explicit broadcast (the suite runs with jax_numpy_rank_promotion="raise").
    components = jnp.arange(r_max).reshape((1,) * ranks.ndim + (r_max,))
    return components < ranks[..., None]


def mask_rank(factors: LoRAFactors, ranks: jax.Array) -> LoRAFactors:
    """Zeroes the rank components ``j >= ranks[...]`` (columns of ``b``, rows of ``a``).

    Args:
      factors: ``b (..., d, r_max)``, ``a (..., r_max, k)``.
      ranks: integer ranks broadcastable to the leading axes ``...``.

    Zero-padded components stay zero under gradient steps (their gradients vanish, and weight decay
    and momentum keep zeros at zero), so masking once at init keeps a client at its own rank.
    """
    mask = rank_mask(ranks, factors.rank).astype(factors.b.dtype)
    return LoRAFactors(b=factors.b * mask[..., None, :], a=factors.a * mask[..., :, None])
