"""The aggregation-broadcast operator (ABO) signature, shared tree maths and input validation.

An ABO is a factory returning ``ABO(init, aggregate)``, a NamedTuple of pure functions (in the
manner of optax's ``GradientTransformation``)::

    state = abo.init(clients, key=key)
    broadcast, state, diagnostics = abo.aggregate(clients, weights, state)

* ``clients``: a pytree whose :class:`~abo_jax.LoRAFactors` leaves carry a leading client axis ``m``
  (``b (m, d, r)``, ``a (m, r, k)``); frozen positions are ``None``.
* ``weights``: ``(m,)``, ``p_i >= 0``, ``sum p_i = 1``; a client outside the round has weight 0.
* ``broadcast.factors``: the starting factors of every client next round, same tree and shapes as
  ``clients`` (identical across the client axis for global operators).
* ``broadcast.base_delta``: a pytree like ``clients`` with a dense ``(d, k)`` correction (peft
  orientation, already multiplied by the LoRA scale) to add to each frozen base weight, or ``None``.
* ``diagnostics``: a dict of arrays; every operator made with :func:`make_abo` reports ``finite``
  (scalar bool), ``bytes_up`` and ``bytes_down`` (``(m,)``, zero for clients of weight 0).

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.lora import is_lora, lora_leaves

__all__ = [
    "ABO",
    "Broadcast",
    "EmptyState",
    "make_abo",
    "weighted_sum",
    "broadcast_to_clients",
    "num_clients",
    "tree_bytes_per_client",
    "validate_clients",
    "validate_weights",
    "is_concrete",
    "all_finite",
]


class Broadcast(NamedTuple):
    """What the server sends back after a round."""

    factors: Any  # pytree like `clients`: LoRAFactors with leading client axis (m, ...)
    base_delta: Any  # pytree like `clients` of (d, k) dense corrections (peft orientation), or None


class EmptyState(NamedTuple):
    """State of a stateless operator."""


class ABO(NamedTuple):
    """An aggregation-broadcast operator: a pair of pure functions.

    Attributes:
      init: ``init(clients, *, key=None) -> state``.
      aggregate: ``aggregate(clients, weights, state, *, normalize=False)
        -> (Broadcast, state, diagnostics)``.
    """

    init: Callable[..., Any]
    aggregate: Callable[..., tuple[Broadcast, Any, dict[str, jax.Array]]]


def weighted_sum(tree: Any, weights: jax.Array) -> Any:
    """``sum_i p_i x_i`` over the leading client axis of every leaf (``'c,c...->...'``)."""
    return jax.tree.map(lambda x: jnp.einsum("c,c...->...", weights.astype(x.dtype), x), tree)


def broadcast_to_clients(tree: Any, m: int) -> Any:
    """Repeats every leaf along a new leading client axis of size ``m``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m, *x.shape)), tree)


def num_clients(tree: Any) -> int:
    """The size of the leading client axis shared by every leaf of ``tree``."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("clients: the pytree has no array leaves")
    return int(leaves[0].shape[0])


def tree_bytes_per_client(tree: Any) -> int:
    """Bytes of one client's slice of ``tree`` (every leaf has a leading client axis)."""
    return int(sum(np.prod(x.shape[1:]) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def is_concrete(*trees: Any) -> bool:
    """True when no leaf is a tracer (so values can be validated eagerly)."""
    return not any(isinstance(x, jax.core.Tracer) for t in trees for x in jax.tree.leaves(t))


def all_finite(*trees: Any) -> jax.Array:
    """Scalar bool: every element of every leaf is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def validate_weights(weights: Any, m: int, *, normalize: bool = False, atol: float = 1e-5):
    """Checks ``weights`` of shape ``(m,)``: finite, ``>= 0``, not all zero, summing to 1.

    Args:
      weights: client weights ``p``.
      m: the number of clients.
      normalize: divide by the sum instead of requiring it to be 1.
      atol: tolerance on ``|sum p - 1|``.

    Returns:
      The (possibly normalized) weights as an array.

    Raises:
      ValueError: naming ``weights`` and what is wrong.
    """
    w = np.asarray(weights)
    if w.shape != (m,):
        raise ValueError(f"weights: expected shape ({m},) (one per client), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights: must be finite, got {w}")
    if np.any(w < 0):
        raise ValueError(f"weights: must be >= 0, got {w}")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights: all zero; at least one client must take part")
    if normalize:
        return jnp.asarray(weights) / total
    if abs(total - 1.0) > atol:
        raise ValueError(
            f"weights: must sum to 1 (got {total:.8g}); pass normalize=True to divide by the sum"
        )
    return jnp.asarray(weights)


def validate_clients(clients: Any, *, require_lora: bool = True) -> int:
    """Checks the stacked client tree: one client axis, matching ranks, finite values.

    Returns:
      ``m``, the number of clients.

    Raises:
      ValueError: naming the offending argument and shapes.
    """
    leaves = jax.tree.leaves(clients)
    if not leaves:
        raise ValueError("clients: the pytree has no array leaves")
    m = leaves[0].shape[0] if leaves[0].ndim else None
    for x in leaves:
        if x.ndim == 0 or x.shape[0] != m:
            raise ValueError(
                f"clients: every leaf needs the same leading client axis; got shapes "
                f"{[tuple(y.shape) for y in leaves]}"
            )
    factors = lora_leaves(clients)
    if require_lora and not factors:
        raise ValueError("clients: no LoRAFactors leaves found")
    for i, f in enumerate(factors):
        if f.b.ndim != 3 or f.a.ndim != 3:
            raise ValueError(
                f"clients: LoRAFactors #{i} must have b (m, d, r) and a (m, r, k); "
                f"got b {f.b.shape}, a {f.a.shape}"
            )
        m_, d, r = f.b.shape
        _, r2, k = f.a.shape
        if r != r2:
            raise ValueError(
                f"clients: LoRAFactors #{i} rank mismatch: b {f.b.shape} has r={r}, "
                f"a {f.a.shape} has r={r2}"
            )
        if r > min(d, k):
            raise ValueError(
                f"clients: LoRAFactors #{i} rank r={r} exceeds min(d, k) = {min(d, k)} "
                f"for a ({d}, {k}) weight"
            )
    for x in leaves:
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError("clients: contain NaN or Inf values")
    return int(m)


def make_abo(
    init: Callable[..., Any],
    core: Callable[[Any, jax.Array, Any], tuple[Broadcast, Any, dict]],
    *,
    require_lora: bool = True,
    bytes_fn: Callable[[Any, Broadcast], tuple[float, float]] | None = None,
) -> ABO:
    """Builds an :class:`ABO` from a core ``(clients, weights, state) -> (broadcast, state, diag)``.

    The returned ``aggregate`` validates concrete (non-traced) inputs with clear errors, normalizes
    weights on request, and adds ``finite``, ``bytes_up`` and ``bytes_down`` to the diagnostics.

    Args:
      init: ``init(clients, *, key=None) -> state``.
      core: the operator's maths on validated inputs.
      require_lora: the client tree must contain :class:`~abo_jax.LoRAFactors`.
      bytes_fn: ``(clients, broadcast) -> (bytes up, bytes down)`` per participating client; by
        default every client leaf goes up and every broadcast factor (plus ``base_delta``) comes down.

    Example:
      >>> def core(clients, weights, state):
      ...     mean = weighted_sum(clients, weights)
      ...     return Broadcast(broadcast_to_clients(mean, weights.shape[0]), None), state, {}
      >>> my_ps = make_abo(lambda clients, key=None: EmptyState(), core)
    """

    def aggregate(clients, weights, state=None, *, normalize: bool = False):
        if is_concrete(clients, weights):
            m = validate_clients(clients, require_lora=require_lora)
            weights = validate_weights(weights, m, normalize=normalize)
        elif normalize:
            weights = weights / jnp.sum(weights)
        broadcast, state, diag = core(clients, weights, state)
        if bytes_fn is None:
            up = tree_bytes_per_client(clients)
            down = tree_bytes_per_client(broadcast.factors) + sum(
                x.size * x.dtype.itemsize for x in jax.tree.leaves(broadcast.base_delta)
            )
        else:
            up, down = bytes_fn(clients, broadcast)
        taking_part = (weights > 0).astype(jnp.float32)
        diag = {
            **diag,
            "finite": all_finite(broadcast, clients),
            "bytes_up": taking_part * up,
            "bytes_down": taking_part * down,
        }
        return broadcast, state, diag

    return ABO(init=init, aggregate=aggregate)


def stateless_init(clients: Any = None, *, key: jax.Array | None = None) -> EmptyState:
    """``init`` of an operator without state."""
    del clients, key
    return EmptyState()


def map_factors(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Maps ``fn`` over the LoRAFactors nodes only; ``None`` stays ``None``."""
    return jax.tree.map(fn, tree, *rest, is_leaf=is_lora)


def stack_layer_values(values: list[jax.Array]) -> jax.Array:
    """Per-layer scalars in tree order as one ``(L,)`` array (empty when there are no layers)."""
    return jnp.stack(values) if values else jnp.zeros((0,))
