"""FedAvg of full weights: the reference every LoRA operator is compared with.

Reference: McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data
(FedAvg), arXiv:1602.05629.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    Broadcast,
    broadcast_to_clients,
    make_abo,
    stateless_init,
    weighted_sum,
)
from abo_jax.aggregation._streamed import linear_streamed
from abo_jax.lora import LoRAFactors, is_lora, lora_leaves

__all__ = ["fedavg_full", "merge_clients", "merge_broadcast", "fedavg_gap"]


def fedavg_full() -> ABO:
    r"""FedAvg of full (dense) weights: ``W = \sum_i p_i W_i`` broadcast to every client.

    ``clients`` is a pytree of dense trainable weights with a leading client axis ``m`` (no
    :class:`~abo_jax.LoRAFactors`; merge LoRA clients first with :func:`merge_clients`). For LoRA
    clients over a shared ``W0`` and one scale ``s``, FedAvg of the merged weights
    ``W0 + s B_i A_i`` is ``W0 + s \bar Z`` with ``\bar Z = \sum_i p_i B_i A_i``: the product an
    exact LoRA operator must reproduce (see :func:`fedavg_gap`).

    Returns:
      An :class:`ABO` (stateless); ``broadcast.factors`` holds the averaged dense tree (one copy,
      no client axis), ``base_delta`` is ``None``. Bytes per client: every leaf, up and down.

    Example:
      >>> w = {"kernel": jnp.stack([jnp.zeros((3, 2)), jnp.ones((3, 2))])}
      >>> bc, _, _ = fedavg_full().aggregate(w, jnp.array([.5, .5]))
      >>> float(bc.factors["kernel"][0, 0])
      0.5

    References:
      McMahan et al. (FedAvg), arXiv:1602.05629.
    """

    def core(clients, weights, state):
        if lora_leaves(clients):
            raise ValueError(
                "clients: fedavg_full averages dense weights; merge LoRAFactors first "
                "(merge_clients(base, clients, scale))"
            )
        return Broadcast(factors=weighted_sum(clients, weights), base_delta=None), state, {}

    # Streamed over client groups: every leaf is dense, so the sums are the averages.
    streamed = linear_streamed(None, None)
    return make_abo(stateless_init, core, require_lora=False, streamed=streamed)


def _scale_per_layer(scale: Any, clients: Any) -> list[Any]:
    n = len(lora_leaves(clients))
    if isinstance(scale, (int, float)) or (hasattr(scale, "ndim") and scale.ndim <= 1):
        return [scale] * n
    leaves = jax.tree.leaves(scale)
    if len(leaves) != n:
        raise ValueError(f"scale: expected one scale per LoRA layer ({n}), got {len(leaves)}")
    return leaves


def _scaled_product(f: LoRAFactors, scale: Any) -> jax.Array:
    s = jnp.asarray(scale, f.b.dtype)
    prod = f.b @ f.a  # (m, d, k)
    return prod * (s.reshape(-1, 1, 1) if s.ndim == 1 else s)


def merge_clients(base: Any, clients: Any, scale: Any = 1.0) -> Any:
    """Every client's merged weights ``W0 + s_i B_i A_i`` as a dense client tree.

    Args:
      base: a pytree mirroring ``clients`` with the frozen ``(d, k)`` weight (peft orientation) at
        every LoRA node; other positions are ignored (may be ``None``).
      clients: client tree with ``LoRAFactors`` ``b (m, d, r)``, ``a (m, r, k)``; dense leaves
        ``(m, ...)`` pass through unchanged.
      scale: scalar, ``(m,)`` per-client scales, or a pytree with one of those per LoRA layer.

    Returns:
      The client tree with ``(m, d, k)`` merged weights at the LoRA nodes (for :func:`fedavg_full`).
    """
    scales = iter(_scale_per_layer(scale, clients))

    def one(f, w0):
        if not is_lora(f):
            return f
        return w0[None] + _scaled_product(f, next(scales))

    return jax.tree.map(one, clients, base, is_leaf=is_lora)


def merge_broadcast(
    base: Any, broadcast: Broadcast, scale: Any = 1.0, *, num_clients: int | None = None
) -> Any:
    """Each client's model after an ABO: ``W0 + base_delta + s_i P_i Q_i`` at every LoRA node.

    Args:
      base: as in :func:`merge_clients`.
      broadcast: an ABO's :class:`Broadcast`: one copy (a global operator's, ``b (d, r)``) or
        ``factors`` with leading axis ``m``.
      scale: as in :func:`merge_clients` (the scale the clients apply next round).
      num_clients: ``m``, needed to repeat a one-copy broadcast for every client.

    Returns:
      A tree like the clients' with ``(m, d, k)`` dense weights at the LoRA nodes.
    """
    factors = broadcast.factors
    one_copy = any(f.b.ndim == 2 for f in lora_leaves(factors))
    if one_copy:
        if num_clients is None:
            raise ValueError(
                "num_clients: a one-copy broadcast (a global operator's) needs the number of "
                "clients it reaches to be repeated for each"
            )
        factors = broadcast_to_clients(factors, int(num_clients))
    merged = merge_clients(base, factors, scale)
    if broadcast.base_delta is None:
        return merged

    def add(x, delta):
        return x if delta is None else x + delta[None]

    return jax.tree.map(add, merged, broadcast.base_delta, is_leaf=lambda x: x is None)


def fedavg_gap(
    base: Any, clients: Any, weights: jax.Array, broadcast: Broadcast, scale: Any = 1.0
) -> jax.Array:
    r"""How far each client's next model is from FedAvg of the full merged weights.

    .. math::
        g_{l,i} = \big\| (W_0 + \Delta W_0 + s_i P_i Q_i) - (W_0 + \textstyle\sum_j p_j s_j B_j A_j)
        \big\|_F

    Zero (to rounding) for the exact operators (FedEx-LoRA, FLoRA, FFA-LoRA, RoLoRA with a shared
    frozen factor); the SVD tail for SP; the PS aggregation error for PS. Forms dense ``(m, d, k)``
    arrays: a diagnostic for small models and tests, not for the hot path.

    Args:
      base: frozen weights, see :func:`merge_clients`.
      clients: the client factors the ABO aggregated.
      weights: ``(m,)``.
      broadcast: the ABO's output on ``(clients, weights)``.
      scale: the clients' scale(s), see :func:`merge_clients`.

    Returns:
      ``(L, m)``: per adapted layer (tree order) and client.
    """
    target = merge_clients(base, clients, scale)
    ours = merge_broadcast(base, broadcast, scale, num_clients=weights.shape[0])
    gaps = []
    for f, t, o in zip(
        jax.tree.leaves(clients, is_leaf=is_lora),
        jax.tree.leaves(target, is_leaf=is_lora),
        jax.tree.leaves(ours, is_leaf=is_lora),
        strict=True,
    ):
        if not is_lora(f):
            continue
        avg = jnp.einsum("c,cdk->dk", weights.astype(t.dtype), t)
        gaps.append(jnp.sqrt(jnp.sum((o - avg[None]) ** 2, axis=(1, 2))))
    return jnp.stack(gaps) if gaps else jnp.zeros((0, weights.shape[0]))
