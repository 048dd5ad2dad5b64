"""FedEx-LoRA: PS factors plus the exact residual folded into the frozen base weights.

Reference: Singhal, Ponkshe, Vepakomma, Exact Aggregation for Federated and Efficient Fine-Tuning of
Foundation Models (FedEx-LoRA), arXiv:2410.09432.
"""

from __future__ import annotations

import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    check_scale,
    make_abo,
    stateless_init,
    weighted_sum,
)
from abo_jax.lora import LoRAFactors

__all__ = ["fedex"]


def fedex(scale: float = 1.0) -> ABO:
    r"""FedEx-LoRA: broadcast the averaged factors and fold the exact residual into ``W0``.

    .. math::
        P = \bar B = \sum_i p_i B_i,\quad Q = \bar A = \sum_i p_i A_i,\qquad
        \Delta W_0 = s\Big(\sum_i p_i B_i A_i - \bar B \bar A\Big)
                   = s \sum_i p_i (B_i - \bar B)(A_i - \bar A).

    The residual is computed in its covariance form (no cancellation) and returned in
    ``broadcast.base_delta`` in peft orientation ``(d, k)`` for every layer, square or not (never
    transposed), so the next global model is exactly the FedAvg of the clients' merged weights:
    ``W0 + \Delta W_0 + s P Q = W0 + s \bar Z`` with ``\bar Z = \sum_i p_i B_i A_i``.

    Args:
      scale: the LoRA scale ``s`` the clients apply (``alpha / r``); the residual is multiplied by it.

    Returns:
      An :class:`ABO` (stateless). Diagnostics: ``residual_norm`` ``(L,)``, the Frobenius norm of
      ``\Delta W_0`` per layer. Bytes per client: up ``r (d + k)`` values per layer; down
      ``r (d + k) + d k`` (the factors and the dense residual).

    Example:
      >>> b = jnp.ones((2, 4, 1)); a = jnp.ones((2, 1, 3))
      >>> bc, _, diag = fedex().aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> bc.base_delta["w"].shape
      (4, 3)

    References:
      Singhal et al. (FedEx-LoRA), arXiv:2410.09432.
    """
    s = check_scale(scale)

    def core(clients, weights, state):
        def one_layer(f: LoRAFactors, _):
            mean = weighted_sum(f, weights)
            w = weights.astype(f.b.dtype)
            # sum_i p_i (B_i - Bbar)(A_i - Abar) == Zbar - Bbar Abar (DESIGN.md identity 4).
            residual = s * jnp.einsum("c,cdr,crk->dk", w, f.b - mean.b[None], f.a - mean.a[None])
            return LayerResult(
                factors=mean,
                base_delta=residual,
                diag={"residual_norm": jnp.linalg.norm(residual)},
            )

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        return broadcast, state, diag

    return make_abo(stateless_init, core, traits=Traits(corrects_base=True, lora_scale=s))
