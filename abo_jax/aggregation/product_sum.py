"""Product-Sum (PS): average ``B`` and ``A`` separately and broadcast the averages.

Reference: Chen et al., arXiv:2508.01348 (SP/PS naming); FedIT (Zhang et al., arXiv:2305.05644).
"""

from __future__ import annotations

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    aggregate_layers,
    make_abo,
    stateless_init,
    weighted_sum,
)
from abo_jax.aggregation._streamed import linear_streamed
from abo_jax.lora import LoRAFactors

__all__ = ["product_sum"]


def product_sum() -> ABO:
    r"""PS (Product-Sum): the product of the averaged factors.

    .. math::
        P = \bar B = \sum_i p_i B_i, \qquad Q = \bar A = \sum_i p_i A_i .

    Every client receives ``(P, Q)`` (one copy: ``broadcast.factors`` has no client axis). PS minimizes the strong (factor) mismatch and satisfies the
    strong convergence condition (arXiv:2508.01348); its product misses ``Zbar`` by
    ``sum_i p_i (B_i - Bbar)(A_i - Abar)``. Bytes up and down per client: ``r (d + k)`` values per
    layer. Dense (non-LoRA) leaves of ``clients`` are averaged the same way. Has a streamed form
    (``abo.streamed``: the averages accumulated over client groups).

    Returns:
      An :class:`ABO` (stateless).

    Example:
      >>> b = jnp.ones((2, 4, 1)); a = jnp.ones((2, 1, 3))
      >>> bc, _, _ = product_sum().aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> bc.factors["w"].a.shape  # one copy for every client
      (1, 3)

    References:
      Chen et al., arXiv:2508.01348; Zhang et al. (FedIT), arXiv:2305.05644.
    """

    def core(clients, weights, state):
        def one_layer(f: LoRAFactors, _):
            return LayerResult(factors=weighted_sum(f, weights))

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        return broadcast, state, diag

    # Streamed over client groups: the sums are the averages themselves.
    streamed = linear_streamed(weighted_sum, lambda sums, one, layer: LayerResult(factors=sums))
    return make_abo(stateless_init, core, streamed=streamed)
