"""Client sampling: who takes part in a round. Non-sampled clients get weight 0 (fixed shapes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "ClientSampling",
    "full_participation",
    "uniform_sampling",
    "bernoulli_sampling",
    "participation_weights",
]


class ClientSampling(NamedTuple):
    """A client sampler: ``sample(key, m) -> (m,) bool`` plus a check of ``m``."""

    sample: Callable[[jax.Array, int], jax.Array]
    validate: Callable[[int], None]
    count: int | None = None  # clients per round when fixed (lets the round train only those)


def _no_check(m: int) -> None:
    if m <= 0:
        raise ValueError(f"need at least one client, got m = {m}")


def full_participation() -> ClientSampling:
    """Every client takes part in every round (the paper's setting)."""
    return ClientSampling(lambda key, m: jnp.ones((m,), bool), _no_check)


def uniform_sampling(count: int) -> ClientSampling:
    """``count`` clients drawn uniformly without replacement each round.

    Example:
      >>> uniform_sampling(3).sample(jax.random.key(0), 10).sum()
      Array(3, dtype=int32)
    """
    count = int(count)
    if count <= 0:
        raise ValueError(f"uniform_sampling: count must be positive, got {count}")

    def validate(m: int) -> None:
        _no_check(m)
        if count > m:
            raise ValueError(
                f"uniform_sampling: cannot sample count = {count} clients out of m = {m}"
            )

    def sample(key, m):
        chosen = jax.random.choice(key, m, (count,), replace=False)
        return jnp.zeros((m,), bool).at[chosen].set(True)

    return ClientSampling(sample, validate, count)


def bernoulli_sampling(prob: float) -> ClientSampling:
    """Each client takes part independently with probability ``prob``.

    A round in which nobody was drawn takes the single client with the highest draw instead, so
    every round has at least one participant.
    """
    prob = float(prob)
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"bernoulli_sampling: prob must be in (0, 1], got {prob}")

    def sample(key, m):
        u = jax.random.uniform(key, (m,))
        taking = u < prob
        fallback = jnp.arange(m) == jnp.argmin(u)
        return jnp.where(jnp.any(taking), taking, fallback)

    return ClientSampling(sample, _no_check)


def participation_weights(weights: jax.Array, taking_part: jax.Array) -> jax.Array:
    """``p_i 1[i in round] / sum_j p_j 1[j in round]`` (the base weights if that sum is 0).

    Args:
      weights: ``(m,)`` base client weights.
      taking_part: ``(m,)`` bool.
    """
    w = jnp.where(taking_part, weights, 0.0)
    total = jnp.sum(w)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), weights)
