"""FFA-LoRA: ``A`` frozen at its shared random init, only ``B`` trained and averaged.

Reference: Sun, Li, Li, Ding, Privacy-Preserving Low-Rank Adaptation in Federated Learning
(FFA-LoRA), arXiv:2403.12313.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    make_abo,
    weighted_sum,
)
from abo_jax.aggregation._frozen import check_frozen_equal, frozen_spread, reference_copy
from abo_jax.lora import LoRAFactors

__all__ = ["ffa", "FFAState"]


class FFAState(NamedTuple):
    """State of :func:`ffa` (none; it only says that ``A`` is frozen)."""

    def trainable_factors(self) -> LoRAFactors:
        """``B`` trained, ``A`` frozen (see :func:`~abo_jax.aggregation.trainable_factors`)."""
        return LoRAFactors(b=jnp.array(True), a=jnp.array(False))


def ffa() -> ABO:
    r"""FFA-LoRA: ``A`` stays at its shared init; the server averages ``B`` only.

    .. math::
        P = \bar B = \sum_i p_i B_i,\qquad Q = A \;(\text{the clients' common, frozen } A),
        \qquad P Q = \sum_i p_i B_i A = \bar Z \text{ exactly.}

    Because every client shares ``A``, PS on ``B`` is exact in product (DESIGN.md identity 8). The
    clients must freeze ``A``: ``trainable_factors(state)`` returns ``b=True, a=False``; apply
    :func:`~abo_jax.aggregation.freeze_factors` to the optimizer updates. Concrete calls raise ``ValueError`` when
    participating clients hold different ``A``; inside jit, watch ``diagnostics["a_spread"]``.

    Returns:
      An :class:`ABO` with state :class:`FFAState`. Diagnostics: ``a_spread`` ``(L,)``, the largest
      deviation of a participating client's ``A`` from the broadcast one (0 when frozen). Bytes per
      client: up and down ``d r`` values per layer (``B`` only).

    Example:
      >>> b = jnp.ones((2, 4, 1)); a = jnp.ones((2, 1, 3))
      >>> bc, _, diag = ffa().aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> diag["bytes_up"]  # B only: 4 float32 values per client
      Array([16., 16.], dtype=float32)

    References:
      Sun et al. (FFA-LoRA), arXiv:2403.12313.
    """

    def init_fn(clients=None, *, key=None):
        del clients, key
        return FFAState()

    def core(clients, weights, state):
        def one_layer(f: LoRAFactors, _):
            check_frozen_equal(f.a, weights, "A (FFA-LoRA)")
            _, d, r = f.b.shape
            out = LoRAFactors(b=weighted_sum(f.b, weights), a=reference_copy(f.a, weights))
            nbytes = d * r * f.b.dtype.itemsize
            return LayerResult(
                factors=out,
                diag={"a_spread": frozen_spread(f.a, weights)},
                bytes_up=nbytes,
                bytes_down=nbytes,
            )

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        return broadcast, FFAState(), diag

    return make_abo(init_fn, core, traits=Traits(trainable=lambda state: state.trainable_factors()))
