"""RoLoRA: alternate, round by round, which factor the clients train and the server averages.

Reference: Chen, Guo, Yuan, Wang, Robust Federated Finetuning of LLMs via Alternating Optimization of
LoRA (RoLoRA), arXiv:2409.02346.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    is_concrete,
    make_abo,
    weighted_sum,
)
from abo_jax.aggregation._frozen import check_frozen_equal, frozen_spread, reference_copy
from abo_jax.lora import LoRAFactors

__all__ = ["rolora", "RoLoRAState", "rolora_trainable"]


class RoLoRAState(NamedTuple):
    """State of :func:`rolora`."""

    round: jax.Array  # () int32, rounds aggregated so far; even: clients train B, odd: A

    def trainable_factors(self) -> LoRAFactors:
        """The factor trained this round (see :func:`rolora_trainable`)."""
        return rolora_trainable(self)


def rolora_trainable(state: RoLoRAState) -> LoRAFactors:
    """Which factor the clients train in the round that ``state`` starts.

    Even rounds (starting with round 0) train ``B`` with ``A`` frozen, odd rounds train ``A`` with
    ``B`` frozen; ``B`` goes first because with the standard ``B = 0`` init the gradient of ``A``
    vanishes. Works on traced states.

    Returns:
      ``LoRAFactors(b=bool[], a=bool[])``: exactly one is True. Freeze the other with
      :func:`~abo_jax.aggregation.freeze_factors` applied to the optimizer updates.
    """
    train_a = (state.round % 2) == 1
    return LoRAFactors(b=jnp.logical_not(train_a), a=train_a)


def rolora() -> ABO:
    r"""RoLoRA (alternating): average only the factor trained this round; the other is shared.

    .. math::
        \text{even } t:\ P = \sum_i p_i B_i,\ Q = A;\qquad
        \text{odd } t:\ P = B,\ Q = \sum_i p_i A_i,

    where the untrained factor (``A`` in even rounds, ``B`` in odd ones) is the clients' common copy.
    Either way ``P Q = \sum_i p_i B_i A_i`` exactly (one factor shared, DESIGN.md identity 8). The
    state counts the rounds; :func:`rolora_trainable` (or ``trainable_factors(state)``) tells the
    simulator which factor to train. Concrete calls raise ``ValueError`` when participating clients'
    frozen factor differs.

    Returns:
      An :class:`ABO` with state :class:`RoLoRAState` (``init`` starts at round 0). Diagnostics:
      ``trained_a`` (scalar bool), ``frozen_spread`` ``(L,)`` (0 when the frozen factor is shared).
      Bytes per client, up and down: the trained factor only, ``d r`` values (even rounds) or
      ``r k`` (odd rounds) per layer.

    Example:
      >>> abo = rolora()
      >>> clients = {"w": LoRAFactors(jnp.ones((2, 4, 1)), jnp.ones((2, 1, 3)))}
      >>> state = abo.init(clients)
      >>> bool(rolora_trainable(state).b)
      True

    References:
      Chen et al. (RoLoRA), arXiv:2409.02346.
    """

    def init_fn(clients=None, *, key=None):
        del clients, key
        return RoLoRAState(round=jnp.zeros((), jnp.int32))

    def core(clients, weights, state):
        if not isinstance(state, RoLoRAState):
            raise ValueError(f"state: expected RoLoRAState from rolora().init, got {type(state)}")
        train_a = rolora_trainable(state).a

        def one_layer(f: LoRAFactors, _):
            _, d, r = f.b.shape
            k = f.a.shape[-1]
            if is_concrete(train_a):  # under jit it is staged even for a concrete state
                if bool(train_a):
                    check_frozen_equal(f.b, weights, "B (RoLoRA, odd round)")
                else:
                    check_frozen_equal(f.a, weights, "A (RoLoRA, even round)")
            mean = weighted_sum(f, weights)
            b = jnp.where(train_a, reference_copy(f.b, weights), mean.b)
            a = jnp.where(train_a, mean.a, reference_copy(f.a, weights))
            spread = jnp.where(train_a, frozen_spread(f.b, weights), frozen_spread(f.a, weights))
            nbytes = jnp.where(train_a, r * k, d * r) * f.b.dtype.itemsize
            return LayerResult(
                factors=LoRAFactors(b=b, a=a),
                diag={"frozen_spread": spread},
                bytes_up=nbytes,
                bytes_down=nbytes,
            )

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        diag["trained_a"] = train_a
        return broadcast, RoLoRAState(round=state.round + 1), diag

    return make_abo(init_fn, core, traits=Traits(trainable=lambda state: state.trainable_factors()))
