"""FLoRA: stack the clients' factors, merge the exact sum into the base, restart LoRA fresh.

Reference: Wang et al., FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations, arXiv:2409.05976.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    check_scale,
    make_abo,
)
from abo_jax.lora import LoRAFactors, init_lora

__all__ = ["flora", "FLoRAState"]


class FLoRAState(NamedTuple):
    """State of :func:`flora`."""

    key: jax.Array  # PRNG key (typed key or uint32[2]) for the next round's fresh LoRA init


def flora(scale: float = 1.0, init: Literal["kaiming", "gaussian"] = "kaiming") -> ABO:
    r"""FLoRA (stacking): merge the exact average product into ``W0``, restart from a fresh LoRA.

    .. math::
        \Delta W_0 = s \sum_i p_i B_i A_i = s\,[p_1 B_1 \cdots p_m B_m]\,[A_1; \ldots; A_m],
        \qquad P = 0,\quad Q = A^{\text{fresh}} .

    The stacked product is exact for any ranks. Every client restarts from the same fresh init
    (``B = 0``, new ``A`` drawn with :func:`~abo_jax.init_lora` from the key in the state; one global
    restart per round), so the global model after the round is ``W0 + \Delta W_0``, the FedAvg of the
    clients' merged weights.

    Args:
      scale: the LoRA scale ``s`` the clients apply; the merged sum is multiplied by it.
      init: ``"kaiming"`` or ``"gaussian"`` for the fresh ``A`` (see :func:`~abo_jax.init_lora`).

    Returns:
      An :class:`ABO` with state :class:`FLoRAState`; ``init(clients, key=key)`` needs a key. Layer
      ``l`` draws from ``fold_in(round_key, l)``. Diagnostics: ``delta_norm`` ``(L,)``, the
      Frobenius norm of ``\Delta W_0``. Bytes per client: up ``r (d + k)`` values per layer; down
      the stacked factors of the clients that took part, ``n_{active} r (d + k)`` (each client
      rebuilds the sum; the fresh ``A`` comes from a shared seed and costs nothing).

    Example:
      >>> abo = flora()
      >>> clients = {"w": LoRAFactors(jnp.ones((2, 4, 1)), jnp.ones((2, 1, 3)))}
      >>> state = abo.init(clients, key=jax.random.key(0))
      >>> bc, state, _ = abo.aggregate(clients, jnp.array([.5, .5]), state)
      >>> float(bc.factors["w"].b.sum()), bc.base_delta["w"].shape
      (0.0, (4, 3))

    References:
      Wang et al. (FLoRA), arXiv:2409.05976.
    """
    s = check_scale(scale)
    if init not in ("kaiming", "gaussian"):
        raise ValueError(f"init: must be 'kaiming' or 'gaussian', got {init!r}")

    def init_fn(clients=None, *, key=None):
        del clients
        if key is None:
            raise ValueError(
                "key: flora needs a PRNG key for its fresh LoRA inits (init(..., key=))"
            )
        return FLoRAState(key=key)

    def core(clients, weights, state):
        if not isinstance(state, FLoRAState):
            raise ValueError(f"state: expected FLoRAState from flora().init, got {type(state)}")
        round_key, next_key = jax.random.split(state.key)
        n_active = jnp.sum(weights > 0)

        def one_layer(f: LoRAFactors, layer):
            m, d, r = f.b.shape
            k = f.a.shape[-1]
            w = weights.astype(f.b.dtype)
            delta = s * jnp.einsum("c,cdr,crk->dk", w, f.b, f.a)
            fresh = init_lora(
                jax.random.fold_in(round_key, layer), d, k, r, init=init, dtype=f.a.dtype
            )
            itemsize = f.b.dtype.itemsize
            return LayerResult(
                factors=fresh,
                base_delta=delta,
                diag={"delta_norm": jnp.linalg.norm(delta)},
                bytes_up=r * (d + k) * itemsize,
                bytes_down=n_active * r * (d + k) * itemsize,
            )

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        return broadcast, FLoRAState(key=next_key), diag

    return make_abo(init_fn, core, traits=Traits(corrects_base=True, lora_scale=s))
