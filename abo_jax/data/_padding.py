"""Padded client data, client weights, and masked per-client epochs.

Clients hold different numbers of examples. :func:`pad_clients` stacks them into one
:class:`~abo_jax.data.ClientData` of shape ``(m, n_max, ...)`` with a validity mask, so that a
round is one ``jax.vmap`` over clients with fixed shapes. :func:`epoch_batches` is written for ONE
client; ``jax.vmap`` it over clients with ``jax.random.split`` keys.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.data._partition import Partition
from abo_jax.data._shuffle import permutation, stable_partition
from abo_jax.data.client_data import ClientData

__all__ = ["pad_clients", "client_weights", "epoch_batches", "num_batches"]


def pad_clients(
    x: Any,
    y: Any,
    partition: Partition,
    *,
    n_max: int | None = None,
) -> ClientData:
    """Gathers each client's examples into one padded array with a mask.

    Client ``i``'s examples (in the order of ``partition.indices[i]``) fill rows ``0..n_i - 1``;
    rows ``n_i..n_max - 1`` are zeros in ``x`` and ``y`` and False in ``mask``.

    Args:
      x: ``(n, ...)`` inputs (any dtype; kept).
      y: ``(n,)`` integer labels.
      partition: a :class:`Partition` over the ``n`` examples.
      n_max: padded length (default ``max_i n_i``); must be ``>= max_i n_i``. Choose a fixed value
        to keep shapes (and the compiled round) the same across partitions.

    Returns:
      :class:`ClientData` with ``x (m, n_max, ...)``, ``y (m, n_max)`` int32, ``mask (m, n_max)``
      bool and ``sizes (m,)`` int32, as jax arrays.

    Example:
      >>> from abo_jax.data import iid
      >>> p = iid(np.arange(10) % 2, num_clients=3, key=0)
      >>> data = pad_clients(np.ones((10, 4), np.float32), np.arange(10) % 2, p)
      >>> data.x.shape, data.mask.sum(axis=1).tolist()
      ((3, 4, 4), [4, 3, 3])
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (n, ...) and y (n,) with the same n, got {x.shape}, {y.shape}")
    sizes = np.asarray(partition.sizes, dtype=np.int64)
    m = sizes.shape[0]
    longest = int(sizes.max()) if m else 0
    if n_max is None:
        n_max = longest
    elif n_max < longest:
        raise ValueError(f"n_max={n_max} is smaller than the largest client ({longest} examples)")
    flat = (
        np.concatenate([np.asarray(i, np.int64) for i in partition.indices])
        if m
        else np.zeros(0, np.int64)
    )
    if flat.size and (flat.min() < 0 or flat.max() >= y.shape[0]):
        raise ValueError(f"partition indices out of range for {y.shape[0]} examples")
    rows = np.repeat(np.arange(m), sizes)
    starts = np.cumsum(sizes) - sizes
    cols = np.arange(flat.size) - np.repeat(starts, sizes)
    px = np.zeros((m, n_max, *x.shape[1:]), dtype=x.dtype)
    py = np.zeros((m, n_max), dtype=np.int32)
    mask = np.zeros((m, n_max), dtype=bool)
    px[rows, cols] = x[flat]
    py[rows, cols] = y[flat]
    mask[rows, cols] = True
    return ClientData(
        x=jnp.asarray(px),
        y=jnp.asarray(py),
        mask=jnp.asarray(mask),
        sizes=jnp.asarray(sizes.astype(np.int32)),
    )


def client_weights(sizes: Any, dtype: Any = None) -> jax.Array:
    """The default aggregation weights ``p_i = n_i / sum_j n_j``.

    Args:
      sizes: ``(m,)`` non-negative client sizes ``n_i`` (e.g. ``ClientData.sizes``).
      dtype: float dtype of the result (default: JAX's default float).

    Returns:
      ``(m,)`` weights summing to 1.

    Raises:
      ValueError: (for concrete inputs) negative sizes, or all sizes zero.
    """
    n = jnp.asarray(sizes)
    if n.ndim != 1:
        raise ValueError(f"sizes must have shape (m,), got {n.shape}")
    if not isinstance(n, jax.core.Tracer):
        if bool(jnp.any(n < 0)):
            raise ValueError(f"client sizes must be >= 0, got {np.asarray(n).tolist()}")
        if not bool(jnp.sum(n) > 0):
            raise ValueError("all client sizes are zero: weights n_i / sum n are undefined")
    dtype = jnp.result_type(float) if dtype is None else dtype
    n = n.astype(dtype)
    return n / jnp.sum(n)


def num_batches(n_max: int, batch_size: int) -> int:
    """Minibatches per epoch for every client: ``ceil(n_max / batch_size)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(n_max / batch_size)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def epoch_batches(key: jax.Array, mask: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One epoch of shuffled, masked minibatch indices for ONE client.

    The client's real rows (``mask`` True) are put in a random order drawn from ``key`` and come
    first; the padded rows follow. The ``n_max`` slots are then cut into
    ``num_batches = ceil(n_max / batch_size)`` batches (the last one filled up with index 0 and
    masked). So a client with ``n_i`` examples has ``ceil(n_i / batch_size)`` batches holding real
    data (the last possibly partial) and fully-masked trailing batches, which a training step
    should treat as a no-op (e.g. skip the update when ``valid.sum() == 0``; average the loss over
    valid slots only). Each real example appears exactly once per epoch.

    ``num_batches`` depends only on ``n_max`` (static), so the same shapes hold for every client and
    the function vmaps without recompiling. Use a new key per epoch (e.g.
    ``jax.random.fold_in(client_key, epoch)``); across clients::

        keys = jax.random.split(key, m)
        idx, valid = jax.vmap(epoch_batches, in_axes=(0, 0, None))(keys, data.mask, 64)
        # idx, valid: (m, num_batches, 64); batch j of client i is data.x[i, idx[i, j]]

    Args:
      key: a ``jax.random`` key for this client and epoch.
      mask: ``(n_max,)`` bool, True for the client's real rows.
      batch_size: ``b``, a static Python int (the function is jitted with it static).

    Returns:
      ``(indices, valid)``: int32 ``(num_batches, b)`` row indices into the client's ``n_max`` rows,
      and bool ``(num_batches, b)``, True where the slot holds a real example.
    """
    mask = jnp.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"mask must have shape (n_max,) for one client, got {mask.shape}")
    n_max = mask.shape[0]
    nb = num_batches(n_max, batch_size)
    # The same draws as jax.random.permutation, and a stable partition that keeps the random order
    # among the real rows and puts them first; both without XLA's key-value sort (_shuffle.py).
    perm = permutation(key, n_max)
    order = perm[stable_partition(mask[perm])]
    valid = mask[order]
    extra = nb * batch_size - n_max
    order = jnp.concatenate([order, jnp.zeros((extra,), jnp.int32)])
    valid = jnp.concatenate([valid, jnp.zeros((extra,), bool)])
    return order.reshape(nb, batch_size), valid.reshape(nb, batch_size)
