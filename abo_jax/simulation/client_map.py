"""How the clients of a round are trained, chosen from the shapes: one vmap, or groups sized to the cache.

``jax.vmap`` over every client is the right form when the clients share a large frozen base (LoRA):
the base's products become one large GEMM. When each client carries its own full weights, vmap
turns every product into a batch of small per-client GEMMs and holds the weights, gradients and
optimizer state of every client at once; past the cache that costs more than it saves (full-weight
FedAvg of a 64-200-200-10 MLP with 1000 clients: 3x slower than groups of 10). :func:`auto_clients`
decides at trace time from the per-client working set (trainable parameters, their gradient and
update, the optimizer state: ``jax.eval_shape`` of one client's training) against a cache budget:
all clients at once when they fit, else :func:`~abo_jax.client_groups` of the size that fits.

Measured side by side on 2 CPU cores (``experiments/bench/RESULTS.md``, benchmark 8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["auto_clients", "client_group_size", "default_map_clients", "CACHE_BYTES"]

#: The working set one group of clients may hold (a quarter of this machine's 32 MiB L3, about what
#: one core's share of a server L3 is): chosen by measurement (benchmark 8, groups of 1 to 100).
CACHE_BYTES = 8 * 2**20


def _nbytes(tree: Any) -> int:
    return int(
        sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    )


def client_group_size(train: Callable, per_client: tuple, cache_bytes: int = CACHE_BYTES) -> int:
    """Clients per group whose working set fits ``cache_bytes`` (at least 1, at most ``m``).

    The working set of one client is what its local step keeps live: the trainable parameters, their
    gradient and update (three times the parameters' bytes) and the optimizer state, read from
    ``jax.eval_shape(train, one client)`` (nothing is computed). What the clients share (the frozen
    base, closed over by ``train``) is not counted: it is held once, not per client.

    Args:
      train: one client's training, ``train(*per_client_slices) -> ClientUpdate``.
      per_client: the per-client arguments, every array leaf with the client axis ``m`` first.
      cache_bytes: the budget.

    Example:
      >>> import jax.numpy as jnp
      >>> from abo_jax.simulation.client import ClientUpdate
      >>> train = lambda x: ClientUpdate(jnp.zeros((2**18,)), None, x.sum(), jnp.int32(1))
      >>> client_group_size(train, (jnp.ones((100, 3)),), cache_bytes=2**23)  # 3 MiB per client
      2
    """
    m = jax.tree.leaves(per_client)[0].shape[0]
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), per_client)
    update = jax.eval_shape(train, *one)
    working = 3 * _nbytes(update.trainable) + _nbytes(update.opt_state)
    return int(max(1, min(m, int(cache_bytes) // max(working, 1))))


def auto_clients(mesh=None, *, cache_bytes: int = CACHE_BYTES) -> Callable[[Callable, tuple], Any]:
    """A ``map_clients`` that picks the form by the shapes: vmap when the clients fit the cache,
    else client groups sized to it (the default of :func:`~abo_jax.federated_round`).

    The choice is made once, at trace time, from :func:`client_group_size`; with a
    ``("clients",)`` ``mesh`` it applies to every device's share of the clients (as
    :func:`~abo_jax.client_groups`). A LoRA client (small factors over a shared base) fits by the
    hundred, so LoRA rounds of up to about a hundred clients keep the one vmap and its numbers; a
    full-weight client of the paper's 784-200-200-10 MLP (3.2 MB working set) trains two at a time.
    Same numbers as vmap up to float32 rounding.

    Args:
      mesh: ``None`` or the ``("clients",)`` mesh the round runs on (see :func:`~abo_jax.on_mesh`).
      cache_bytes: the working set one group may hold (default :data:`CACHE_BYTES`).
    """
    if int(cache_bytes) <= 0:
        raise ValueError(f"auto_clients: cache_bytes must be positive, got {cache_bytes}")
    devices = 1 if mesh is None else mesh.shape[mesh.axis_names[0]]

    def map_clients(train, per_client):
        from abo_jax.simulation.federated import client_groups  # that module imports this one

        m = jax.tree.leaves(per_client)[0].shape[0]
        shards = devices if m % devices == 0 else 1
        size = client_group_size(train, per_client, cache_bytes)
        if size >= m // shards:
            return jax.vmap(train)(*per_client)
        return client_groups(size, mesh)(train, per_client)

    return map_clients


#: ``auto_clients()`` on one device: the default ``map_clients`` of :func:`~abo_jax.federated_round`.
default_map_clients = auto_clients()
