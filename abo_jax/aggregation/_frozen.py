"""Shared helpers for operators in which clients keep one factor frozen (FFA-LoRA, RoLoRA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.aggregation._base import is_concrete


def reference_copy(x: jax.Array, weights: jax.Array) -> jax.Array:
    """The frozen factor as held by a participating client (``x[argmax p]``), ``x`` ``(m, ...)``.

    Taking one client's copy (not the average) keeps a frozen factor bit-exact across rounds, and a
    client of weight 0 never supplies it.
    """
    return x[jnp.argmax(weights)]


def frozen_spread(x: jax.Array, weights: jax.Array) -> jax.Array:
    """``max_i |x_i - x_ref|`` over participating clients: 0 when the frozen factor is shared."""
    ref = reference_copy(x, weights)
    dev = jnp.max(jnp.abs(x - ref[None]).reshape(x.shape[0], -1), axis=1)
    return jnp.max(jnp.where(weights > 0, dev, jnp.zeros_like(dev)))


def check_frozen_equal(x: jax.Array, weights: jax.Array, what: str, rtol: float = 1e-6) -> None:
    """Concrete inputs only: raise when participating clients hold different frozen factors."""
    if not is_concrete(x, weights):
        return
    xs, w = np.asarray(x), np.asarray(weights)
    live = xs[w > 0]
    if live.shape[0] == 0:
        return
    scale = np.max(np.abs(live[0])) + np.finfo(xs.dtype).tiny
    if np.max(np.abs(live - live[:1])) > rtol * scale:
        raise ValueError(
            f"clients: {what} is frozen, so it must be identical on every participating client; "
            "the clients' copies differ (freeze it with freeze_factors(updates, "
            "trainable_factors(state)))"
        )
