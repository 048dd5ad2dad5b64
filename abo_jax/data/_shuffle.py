"""Shuffles and stable partitions without XLA's key-value sort (the epoch's orders, fast on CPU).

Every epoch of every client starts with a random order of its rows. ``jax.random.permutation``
draws it by sorting fresh 32-bit random keys (with the row index as the value) in
``ceil(3 ln n / ln(2^32 - 1))`` rounds; on XLA:CPU a key-value sort runs through a generic
comparator and took 21 ms per round for the paper's 10 clients of 6016 rows (about a tenth of the
whole round, ``experiments/bench/RESULTS.md``), while a one-operand ``uint32`` sort takes a
fifth of that. The functions here give the **same results** as the jax calls they replace (tested
element for element), built from one-operand sorts, gathers and cumulative sums:

* :func:`stable_argsort_u32` = ``lax.sort_key_val(keys, arange(n))[1]`` (a stable argsort): an LSD
  radix sort whose passes each sort ``digit << p | position`` as one ``uint32`` (``p`` bits for
  the position, the rest for a digit of the key), so ties keep their order;
* :func:`permutation` = ``jax.random.permutation(key, n)``: the same keys, rounds and ties;
* :func:`stable_partition` = ``jnp.argsort(~flags, stable=True)``: the True rows first, each group
  in its order, by cumulative sums and one scatter.

All take one row (1-D); ``jax.vmap`` them over clients.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["stable_argsort_u32", "permutation", "stable_partition", "shuffle_rounds"]

# Above this many position bits a digit would be too narrow to be worth it; fall back to XLA's sort.
_MAX_POSITION_BITS = 24


def stable_argsort_u32(keys: jax.Array) -> jax.Array:
    """The order that sorts ``keys`` ascending, ties in their original order.

    Args:
      keys: ``(n,)`` ``uint32``.

    Returns:
      ``(n,)`` ``int32`` indices ``o`` with ``keys[o]`` ascending and, among equal keys, ``o``
      increasing: exactly ``lax.sort_key_val(keys, jnp.arange(n))[1]``.
    """
    keys = jnp.asarray(keys)
    if keys.ndim != 1 or keys.dtype != jnp.uint32:
        raise ValueError(f"keys: expected a 1-D uint32 array, got {keys.dtype} {keys.shape}")
    n = keys.shape[0]
    p = max(1, (n - 1).bit_length())  # bits for a position 0..n-1
    if p > _MAX_POSITION_BITS:
        return lax.sort_key_val(keys, jnp.arange(n, dtype=jnp.int32))[1]
    digit_bits = 32 - p
    position = jnp.arange(n, dtype=jnp.uint32)
    position_mask = jnp.uint32((1 << p) - 1)
    order = None  # after each pass: sorted by the digits seen so far, then by original position
    low = 0
    while low < 32:
        width = min(digit_bits, 32 - low)
        current = keys if order is None else keys[order]
        digit = (current >> low) & jnp.uint32((1 << width) - 1)
        # One-operand sort of (digit, position in the current order): ties are impossible, so the
        # pass is stable by construction.
        step = (lax.sort((digit << p) | position) & position_mask).astype(jnp.int32)
        order = step if order is None else order[step]
        low += width
    return order


def shuffle_rounds(n: int) -> int:
    """Rounds of 32-bit keys the sort-based shuffle draws for ``n`` items (jax's heuristic)."""
    return math.ceil(3 * math.log(max(1, n)) / math.log(2**32 - 1))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``0..n-1``: exactly ``jax.random.permutation(key, n)``.

    The sort-based shuffle (fresh 32-bit keys per round, ``shuffle_rounds(n)`` rounds, ties kept in
    order) with :func:`stable_argsort_u32` for the sorts.

    Args:
      key: a ``jax.random`` key.
      n: a static Python int.

    Returns:
      ``(n,)`` ``int32``.
    """
    x = jnp.arange(n, dtype=jnp.int32)
    for _ in range(shuffle_rounds(n)):
        key, subkey = jax.random.split(key)
        x = x[stable_argsort_u32(jax.random.bits(subkey, (n,), jnp.uint32))]
    return x


def stable_partition(flags: jax.Array) -> jax.Array:
    """The positions with ``flags`` True first, then the others, each group in increasing order.

    Args:
      flags: ``(n,)`` bool.

    Returns:
      ``(n,)`` ``int32``: exactly ``jnp.argsort(jnp.logical_not(flags), stable=True)``.
    """
    flags = jnp.asarray(flags, bool)
    if flags.ndim != 1:
        raise ValueError(f"flags: expected a 1-D array, got shape {flags.shape}")
    n = flags.shape[0]
    first = jnp.cumsum(flags, dtype=jnp.int32) - 1
    rest = jnp.sum(flags, dtype=jnp.int32) + jnp.cumsum(~flags, dtype=jnp.int32) - 1
    slot = jnp.where(flags, first, rest)  # where each position goes: a permutation of 0..n-1
    return (
        jnp.zeros((n,), jnp.int32)
        .at[slot]
        .set(jnp.arange(n, dtype=jnp.int32), unique_indices=True, indices_are_sorted=False)
    )
