"""Deliberately wrong operators, for testing ``theory.certify`` (not part of the library).

* :func:`first_client_only`: ``P = p_1 B_1``, ``Q = p_1 A_1``: violates the weak condition.
* :func:`client_zero_only`: ``(P, Q) = (B_1, A_1)``: satisfies the weak and the strong condition,
  violates first-order consistency (it optimizes client 1's objective only).
* :func:`unweighted_mean`: PS with uniform weights: consistent only for uniform ``p``.
* Broken outputs: :func:`returns_none`, :func:`no_client_axis_wrong_shape`,
  :func:`wrong_structure`.
"""

import jax
import jax.numpy as jnp

from abo_jax import Broadcast, LoRAFactors, make_abo
from abo_jax.aggregation import EmptyState


def _stateless():
    return lambda clients=None, *, key=None: EmptyState()


def _global(fn):
    def core(clients, weights, state):
        def one(f):  # a global operator's broadcast: one copy
            return fn(f, weights)

        factors = jax.tree.map(one, clients, is_leaf=lambda x: isinstance(x, LoRAFactors))
        return Broadcast(factors, None), state, {}

    return make_abo(_stateless(), core)


def first_client_only():
    """``P = p_1 B_1``, ``Q = p_1 A_1``: misses every product by ``O(1)`` at a generic start."""
    return _global(
        lambda f, w: LoRAFactors(w[0].astype(f.b.dtype) * f.b[0], w[0].astype(f.b.dtype) * f.a[0])
    )


def client_zero_only():
    """``(P, Q) = (B_1, A_1)`` for everyone: every client is ``O(delta)`` from it."""
    return _global(lambda f, w: LoRAFactors(f.b[0], f.a[0]))


def unweighted_mean():
    """``P = mean_i B_i``, ``Q = mean_i A_i`` (ignores the weights)."""
    return _global(lambda f, w: LoRAFactors(jnp.mean(f.b, 0), jnp.mean(f.a, 0)))


def returns_none():
    return make_abo(_stateless(), lambda clients, weights, state: None)


def no_client_axis_wrong_shape():
    """One global copy, but ``A`` has the wrong number of columns."""

    def core(clients, weights, state):
        f = clients["layer0"]
        return Broadcast({"layer0": LoRAFactors(f.b[0], f.a[0, :, :1])}, None), state, {}

    return make_abo(_stateless(), core)


def wrong_structure():
    """Factors under a different key than the clients'."""

    def core(clients, weights, state):
        f = clients["layer0"]
        return Broadcast({"other": LoRAFactors(f.b, f.a)}, None), state, {}

    return make_abo(_stateless(), core)
