"""Aggregation accumulated over client groups: a global operator's sums, one group at a time.

Many global operators depend on the clients only through weighted sums: PS through
``sum_i p_i B_i`` and ``sum_i p_i A_i``, SP through ``Zbar = sum_i p_i B_i A_i``, FedAvg through the
mean weights. Such an operator can be given a :class:`Streamed` form: the round adds every group's
weighted sums as the group finishes training and calls ``finish`` once, so a round never holds the
``m`` trained client trees at once (``abo_jax.streamed_groups``). ``finish`` returns what
``aggregate`` returns on all the clients at once, to float rounding (the sums are added in another
order; SP always takes the dense SVD of ``Zbar``, the maths of its stacked path).

Reference: Chen et al., arXiv:2508.01348 (the SP and PS maps); DESIGN.md, "Simulator".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import (
    Broadcast,
    LayerResult,
    all_finite,
    stack_layer_diags,
    tree_bytes_per_client,
    weighted_sum,
    weights_diagnostics,
)
from abo_jax.lora import is_lora

__all__ = ["Streamed", "linear_streamed"]


class Streamed(NamedTuple):
    """How a global operator aggregates from weighted sums accumulated over client groups.

    Attributes:
      zeros: ``zeros(one) -> stats``: the empty sums for ``one``, a client's tree without the client
        axis (the round's one start).
      add: ``add(stats, group, weights) -> stats``: adds ``sum_{i in group} p_i phi(x_i)`` for a
        group's trained trees ``(g, ...)`` and their weights ``(g,)`` (0 for clients outside the round
        and for padding).
      finish: ``finish(stats, weights, state, one) -> (Broadcast, state, diagnostics)``: the
        broadcast (one copy), the next state and the diagnostics ``aggregate`` reports, from the sums
        and the round's ``(m,)`` weights.
    """

    zeros: Callable[[Any], Any]
    add: Callable[[Any, Any, jax.Array], Any]
    finish: Callable[[Any, jax.Array, Any, Any], tuple[Broadcast, Any, dict]]


def linear_streamed(
    layer_sum: Callable[[Any, jax.Array], Any] | None,
    layer_finish: Callable[[Any, Any, int], LayerResult] | None,
) -> Streamed:
    """A :class:`Streamed` form from one LoRA layer's weighted sum and its finish.

    Dense leaves (biases, full weights) are averaged (``sum_i p_i x_i``) and sent as they are.

    Args:
      layer_sum: ``(factors (g, ...), weights (g,)) -> sums`` of one LoRA layer, linear in the
        weights (e.g. PS: ``weighted_sum(f, w)``; SP: ``einsum('c,cdr,crk->dk', w, b, a)``).
      layer_finish: ``(sums, one_factors, layer_index) -> LayerResult`` with one copy of the
        factors (``b (d, r)``, ``a (r, k)``) and the layer's diagnostics.
      ``None`` for both: an operator of dense trees only (FedAvg of full weights).

    Returns:
      A :class:`Streamed`. Its diagnostics: the layers' (stacked over layers as
      :func:`~abo_jax.aggregation.aggregate_layers` stacks them), ``weights_sum``, ``weights_valid``,
      ``finite`` (the broadcast and the sums), ``bytes_up`` / ``bytes_down`` ``(m,)`` (one client's
      tree up, the broadcast down, zero for clients outside the round).
    """

    def sums(group, weights):
        def one(x):
            if not is_lora(x):
                return weighted_sum(x, weights)
            if layer_sum is None:
                raise ValueError("clients: this operator's streamed form takes dense leaves only")
            return layer_sum(x, weights)

        return jax.tree.map(one, group, is_leaf=is_lora)

    def zeros(one):
        probe = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), one)
        w = jax.ShapeDtypeStruct((1,), jax.tree.leaves(one)[0].dtype)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sums, probe, w))

    def add(stats, group, weights):
        return jax.tree.map(jnp.add, stats, sums(group, weights))

    def finish(stats, weights, state, one):
        stat_nodes, treedef = jax.tree.flatten(stats, is_leaf=is_lora)
        one_nodes = treedef.flatten_up_to(one)
        out, layer_diags, layer = [], [], 0
        for stat, node in zip(stat_nodes, one_nodes, strict=True):
            if is_lora(node):
                res = layer_finish(stat, node, layer)
                layer += 1
                out.append(res.factors)
                layer_diags.append(res.diag or {})
            else:
                out.append(stat)
        factors = jax.tree.unflatten(treedef, out)
        broadcast = Broadcast(factors=factors, base_delta=None)
        taking_part = (weights > 0).astype(jnp.result_type(float))
        diag = {
            **stack_layer_diags(layer_diags),
            **weights_diagnostics(weights),
            "finite": all_finite(factors, stats),
            "bytes_up": taking_part * tree_bytes_per_client(one, leading=0),
            "bytes_down": taking_part * tree_bytes_per_client(factors, leading=0),
        }
        return broadcast, state, diag

    return Streamed(zeros=zeros, add=add, finish=finish)
