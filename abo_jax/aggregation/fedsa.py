"""FedSA-LoRA: share (average) ``A``, keep ``B`` personal to each client.

Reference: Guo et al., Selective Aggregation for Low-Rank Adaptation in Federated Learning
(FedSA-LoRA), arXiv:2410.01463.
"""

from __future__ import annotations

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    broadcast_to_clients,
    make_abo,
    stateless_init,
    weighted_sum,
)
from abo_jax.lora import LoRAFactors

__all__ = ["fedsa"]


def fedsa() -> ABO:
    r"""FedSA-LoRA (personalized): ``A`` is averaged and shared, each client keeps its own ``B``.

    .. math::
        Q = \bar A = \sum_i p_i A_i \ \text{(all clients)},\qquad P_i = B_i \ \text{(client } i).

    The broadcast factors differ across clients (``b`` is each client's own ``B``), so the model of
    client ``i`` is ``W0 + s B_i \bar A``; a client of weight 0 keeps its ``B`` and receives
    ``\bar A`` without influencing it.

    Returns:
      An :class:`ABO` (stateless). Bytes per client: up and down ``r k`` values per layer (``A``
      only).

    Example:
      >>> b = jnp.ones((2, 4, 1)); a = jnp.ones((2, 1, 3))
      >>> bc, _, _ = fedsa().aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> bc.factors["w"].b.shape
      (2, 4, 1)

    References:
      Guo et al. (FedSA-LoRA), arXiv:2410.01463.
    """

    def core(clients, weights, state):
        def one_layer(f: LoRAFactors, _):
            m, r, k = f.a.shape
            a = broadcast_to_clients(weighted_sum(f.a, weights), m)
            nbytes = r * k * f.a.dtype.itemsize
            return LayerResult(factors=LoRAFactors(b=f.b, a=a), bytes_up=nbytes, bytes_down=nbytes)

        broadcast, diag = aggregate_layers(clients, weights, one_layer, per_client=True)
        return broadcast, state, diag

    return make_abo(stateless_init, core, traits=Traits(personalized=True))
