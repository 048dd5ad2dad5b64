"""The aggregation-broadcast operator (ABO) signature, shared tree maths and input validation.

An ABO is a factory returning ``ABO(init, aggregate)``, a NamedTuple of pure functions (in the
manner of optax's ``GradientTransformation``)::

    state = abo.init(clients, key=key)
    broadcast, state, diagnostics = abo.aggregate(clients, weights, state)

* ``clients``: a pytree whose :class:`~abo_jax.LoRAFactors` leaves carry a leading client axis ``m``
  (``b (m, d, r)``, ``a (m, r, k)``); frozen positions are ``None``.
* ``weights``: ``(m,)``, ``p_i >= 0``, ``sum p_i = 1``; a client outside the round has weight 0.
* ``broadcast.factors``: the next round's start, in the one form the operator's traits declare:
  for a global operator (:attr:`Traits.one_start`: not personalized, one rank) ONE copy, the
  clients' tree without the client axis (``b (d, r)``, ``a (r, k)``, dense leaves ``(...)``); for a
  personalized or heterogeneous-rank operator one start per client, same shapes as ``clients``.
  :func:`make_abo` refuses the other form by name.
* ``broadcast.base_delta``: a pytree like ``clients`` with a dense ``(d, k)`` correction (peft
  orientation, already multiplied by the LoRA scale) to add to each frozen base weight, or ``None``.
* ``diagnostics``: a dict of arrays; every operator made with :func:`make_abo` reports ``finite``
  (scalar bool), ``weights_sum`` (scalar), ``weights_valid`` (scalar bool: finite, ``>= 0``,
  summing to 1), ``bytes_up`` and ``bytes_down`` (``(m,)``, zero for clients of weight 0).
  Per-layer diagnostics are stacked in tree order of the adapted layers (leading axis ``L``).
* Array leaves of ``clients`` that are not LoRA factors (e.g. trainable biases) are averaged with the
  weights and broadcast by every operator (FedAvg), unless the operator says otherwise.
* What the simulator must know about an operator is declared once, on the operator, in
  :attr:`ABO.traits` (:class:`Traits`): whether its broadcast is personal to each client, whether it
  corrects the frozen base, the clients' ranks and LoRA scales it assumes, and which factors the
  clients train in a given state (FFA-LoRA freezes ``A``, RoLoRA alternates; the simulator applies
  the mask with :func:`freeze_factors`).

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.lora import LoRAFactors, is_lora, lora_leaves

__all__ = [
    "ABO",
    "Traits",
    "Broadcast",
    "EmptyState",
    "make_abo",
    "weighted_sum",
    "broadcast_to_clients",
    "check_broadcast_form",
    "num_clients",
    "tree_bytes_per_client",
    "validate_clients",
    "validate_weights",
    "weights_diagnostics",
    "is_concrete",
    "all_finite",
    "LayerResult",
    "aggregate_layers",
    "stack_layer_diags",
    "trainable_factors",
    "freeze_factors",
    "layer_client_ranks",
    "validate_client_ranks",
    "client_scales",
]


class Broadcast(NamedTuple):
    """What the server sends back after a round."""

    factors: Any  # like `clients`: one copy b (d, r), a (r, k) if traits.one_start, else (m, ...)
    base_delta: Any  # pytree like `clients` of (d, k) dense corrections (peft orientation), or None


class EmptyState(NamedTuple):
    """State of a stateless operator."""


def _both_trained(state: Any) -> LoRAFactors:
    del state
    return LoRAFactors(b=jnp.array(True), a=jnp.array(True))


class Traits(NamedTuple):
    """What an operator declares about itself, read by the simulator and by ``theory``.

    Each fact is given once, here; the simulator takes it from the operator and raises when a
    caller states it differently (e.g. other client ranks to the model).

    Attributes:
      personalized: the broadcast differs across clients (FedSA-LoRA keeps each client's ``B``), so
        the model to evaluate is every client's own; global operators send everyone the same
        factors.
      corrects_base: the operator returns a ``base_delta`` to fold into the frozen base (FedEx-LoRA,
        FLoRA), so per-example caches of the base must be recomputed every round.
      client_ranks: ``None`` (every client at the layers' rank) or the static ``(m,)`` integer ranks
        (a pytree of them per LoRA layer) that heterogeneous-rank operators pad and truncate to.
      lora_scale: ``None`` (no convention: any scale) or the LoRA scale ``s`` the operator's maths
        assumes: a float, or ``(m,)`` per-client scales (``alpha / r_i``).
      trainable: ``trainable(state) -> LoRAFactors(b=bool[], a=bool[])``: which factors clients
        train next round (scalar masks; traced states are fine).
    """

    personalized: bool = False
    corrects_base: bool = False
    client_ranks: Any = None
    lora_scale: Any = None
    trainable: Callable[[Any], LoRAFactors] = _both_trained

    @property
    def one_start(self) -> bool:
        """Every client starts the next round from the same broadcast (global, one rank)."""
        return not self.personalized and self.client_ranks is None


class ABO(NamedTuple):
    """An aggregation-broadcast operator: a pair of pure functions and its declared traits.

    Attributes:
      init: ``init(clients, *, key=None) -> state``.
      aggregate: ``aggregate(clients, weights, state, *, normalize=False)
        -> (Broadcast, state, diagnostics)``.
      traits: :class:`Traits` (defaults: global, no base correction, one rank, both factors
        trained).
      streamed: ``None``, or a :class:`~abo_jax.aggregation.Streamed` form of ``aggregate`` that
        accumulates weighted sums over client groups (global operators whose aggregate depends on
        the clients through such sums: PS, SP, FedAvg), used by ``abo_jax.streamed_groups``.
    """

    init: Callable[..., Any]
    aggregate: Callable[..., tuple[Broadcast, Any, dict[str, jax.Array]]]
    traits: Traits = Traits()
    streamed: Any = None  # a Streamed form (aggregation over client groups as they finish), or None


def _check_floating(x: Any, where: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{where}: dtype {dtype} is not a real floating-point type; averaging it in integer "
            "(or complex/bool) arithmetic would be wrong (1/3 -> 0). Cast the factors first, "
            "e.g. jax.tree.map(lambda x: x.astype(jnp.float32), clients)"
        )


def weighted_sum(tree: Any, weights: jax.Array) -> Any:
    """``sum_i p_i x_i`` over the leading client axis of every leaf (``'c,c...->...'``).

    The weights are cast to each leaf's dtype, which must be floating-point (float16 and bfloat16
    included).

    Raises:
      ValueError: a leaf is not floating-point (an integer mean would truncate the weights to 0).
    """

    def one(path, x):
        _check_floating(x, f"weighted_sum: leaf {jax.tree_util.keystr(path) or '<root>'}")
        return jnp.einsum("c,c...->...", weights.astype(x.dtype), x)

    return jax.tree_util.tree_map_with_path(one, tree)


def broadcast_to_clients(tree: Any, m: int) -> Any:
    """Repeats every leaf along a new leading client axis of size ``m``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m, *x.shape)), tree)


def num_clients(tree: Any) -> int:
    """The size of the leading client axis shared by every leaf of ``tree``."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("clients: the pytree has no array leaves")
    return int(leaves[0].shape[0])


def tree_bytes_per_client(tree: Any, *, leading: int = 1) -> int:
    """Bytes of one client's part of ``tree``: each leaf without its ``leading`` axes.

    ``leading=1`` for a stacked client tree ``(m, ...)``; ``leading=0`` for one copy that every
    client receives (a global broadcast).
    """
    return int(sum(np.prod(x.shape[leading:]) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def check_broadcast_form(clients: Any, factors: Any, *, one_copy: bool) -> None:
    """Raises unless ``factors`` is in the form the operator declares (static shapes only).

    Args:
      clients: the stacked client tree given to ``aggregate`` (leading axis ``m``).
      factors: ``broadcast.factors``.
      one_copy: the operator declares :attr:`Traits.one_start`: ``factors`` is one copy (every leaf
        is a client leaf without its client axis); otherwise one start per client (same shapes).
    """
    is_node = lambda x: x is None or is_lora(x)
    c_nodes, c_def = jax.tree.flatten(clients, is_leaf=is_node)
    f_nodes, f_def = jax.tree.flatten(factors, is_leaf=is_node)
    if c_def != f_def:
        raise ValueError(
            f"operator: broadcast.factors has tree structure {f_def}, the clients {c_def}"
        )
    for path_c, (c, f) in enumerate(zip(c_nodes, f_nodes, strict=True)):
        for x, y in zip(jax.tree.leaves(c), jax.tree.leaves(f), strict=True):
            want = tuple(x.shape[1:]) if one_copy else tuple(x.shape)
            if tuple(y.shape) != want:
                form = "one copy (no client axis)" if one_copy else "one start per client"
                traits = "global, one rank" if one_copy else "personalized or heterogeneous-rank"
                raise ValueError(
                    f"operator: broadcast.factors node #{path_c} has shape {tuple(y.shape)}; an "
                    f"operator whose traits say {traits} returns {form}, shape {want}. Return that "
                    "form, or declare the operator's traits (Traits(personalized=True) / "
                    "client_ranks=...)"
                )


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
    if m == 0:
        raise ValueError("weights: there are no clients (m = 0); give at least one client")
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


def weights_diagnostics(weights: jax.Array, *, normalize: bool = False, atol: float = 1e-5):
    """What :func:`validate_weights` checks, as arrays (so it also reports under ``jit``).

    Args:
      weights: ``(m,)`` client weights as given to ``aggregate``.
      normalize: the weights are divided by their sum (so only the sign and a positive sum count).
      atol: tolerance on ``|sum p - 1|``.

    Returns:
      ``{"weights_sum": (), "weights_valid": () bool}``: ``weights_valid`` is True when every weight
      is finite and ``>= 0``, their sum is positive and (unless ``normalize``) within ``atol`` of 1.
    """
    w = jnp.asarray(weights)
    total = jnp.sum(w)
    valid = jnp.all(jnp.isfinite(w)) & jnp.all(w >= 0) & (total > 0)
    if not normalize:
        valid = valid & (jnp.abs(total - 1) <= atol)
    return {"weights_sum": total.astype(jnp.result_type(float)), "weights_valid": valid}


def validate_clients(clients: Any, *, require_lora: bool = True) -> int:
    """Checks the stacked client tree: one client axis, matching ranks, finite values.

    Shapes and dtypes are checked always (also on tracers, at trace time); values only on concrete
    leaves. Every leaf must be floating-point (float16 and bfloat16 included): integer factors
    would be averaged in integer arithmetic.

    Returns:
      ``m``, the number of clients.

    Raises:
      ValueError: naming the offending argument and shapes.
    """
    with_path = jax.tree_util.tree_leaves_with_path(clients)
    leaves = [x for _, x in with_path]
    if not leaves:
        raise ValueError("clients: the pytree has no array leaves")
    m = leaves[0].shape[0] if leaves[0].ndim else None
    for x in leaves:
        if x.ndim == 0 or x.shape[0] != m:
            raise ValueError(
                f"clients: every leaf needs the same leading client axis; got shapes "
                f"{[tuple(y.shape) for y in leaves]}"
            )
    if m == 0:
        raise ValueError(
            "clients: the client axis is empty (m = 0, leaf shapes "
            f"{[tuple(y.shape) for y in leaves]}); give at least one client"
        )
    for path, x in with_path:
        _check_floating(x, f"clients{jax.tree_util.keystr(path)}")
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
        # Values are checked only when concrete; inside jit see diagnostics["finite"].
        if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
            raise ValueError("clients: contain NaN or Inf values")
    return int(m)


def make_abo(
    init: Callable[..., Any],
    core: Callable[[Any, jax.Array, Any], tuple[Broadcast, Any, dict]],
    *,
    require_lora: bool = True,
    bytes_fn: Callable[[Any, Broadcast], tuple[float, float]] | None = None,
    traits: Traits | None = None,
    streamed: Any = None,
) -> ABO:
    """Builds an :class:`ABO` from a core ``(clients, weights, state) -> (broadcast, state, diag)``.

    The returned ``aggregate`` validates concrete (non-traced) inputs with clear errors, normalizes
    weights on request, and adds ``finite``, ``bytes_up`` and ``bytes_down`` to the diagnostics.

    A core may report its own ``bytes_up`` / ``bytes_down`` in its diagnostics (scalars or ``(m,)``,
    bytes per participating client, e.g. from :func:`aggregate_layers`); they take precedence over
    ``bytes_fn`` and the default, and clients of weight 0 are still reported as 0.

    Args:
      init: ``init(clients, *, key=None) -> state``.
      core: the operator's maths on validated inputs.
      require_lora: the client tree must contain :class:`~abo_jax.LoRAFactors`.
      bytes_fn: ``(clients, broadcast) -> (bytes up, bytes down)`` per participating client; by
        default every client leaf goes up and every broadcast factor (plus ``base_delta``) comes down.
      traits: what the operator declares about itself (:class:`Traits`; default ``Traits()``).
      streamed: an optional :class:`~abo_jax.aggregation.Streamed` form of the same maths.

    Example:
      >>> def core(clients, weights, state):  # a global operator: one copy for everyone
      ...     return Broadcast(weighted_sum(clients, weights), None), state, {}
      >>> my_ps = make_abo(lambda clients, key=None: EmptyState(), core)
    """

    traits = Traits() if traits is None else traits
    one_copy = traits.one_start

    def aggregate(clients, weights, state=None, *, normalize: bool = False):
        # Shapes are static, so they are checked even under jit; values only when concrete.
        m = validate_clients(clients, require_lora=require_lora)
        weights_given = jnp.asarray(weights)
        if is_concrete(weights):
            weights = validate_weights(weights, m, normalize=normalize)
        else:
            if tuple(weights.shape) != (m,):
                raise ValueError(
                    f"weights: expected shape ({m},) (one per client), got {tuple(weights.shape)}"
                )
            if normalize:
                weights = weights / jnp.sum(weights)
        broadcast, state, diag = core(clients, weights, state)
        check_broadcast_form(clients, broadcast.factors, one_copy=one_copy)
        diag = dict(diag)
        up, down = diag.pop("bytes_up", None), diag.pop("bytes_down", None)
        if up is None or down is None:
            if bytes_fn is None:
                up = tree_bytes_per_client(clients)
                down = tree_bytes_per_client(broadcast.factors, leading=0 if one_copy else 1) + sum(
                    x.size * x.dtype.itemsize for x in jax.tree.leaves(broadcast.base_delta)
                )
            else:
                up, down = bytes_fn(clients, broadcast)
        taking_part = (weights > 0).astype(jnp.result_type(float))
        diag = {
            **diag,
            **weights_diagnostics(weights_given, normalize=normalize),
            "finite": all_finite(broadcast, clients),
            "bytes_up": taking_part * up,
            "bytes_down": taking_part * down,
        }
        return broadcast, state, diag

    if streamed is not None and not traits.one_start:
        raise ValueError("streamed: only a global operator (traits.one_start) has a streamed form")
    return ABO(init=init, aggregate=aggregate, traits=traits, streamed=streamed)


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


class LayerResult(NamedTuple):
    """What an operator computes for one adapted layer (used with :func:`aggregate_layers`)."""

    factors: LoRAFactors  # next round's start: one copy b (d, r), a (r, k), or per client (m, ...)
    base_delta: jax.Array | None = (
        None  # (d, k) dense correction for W0 (peft orientation), or None
    )
    diag: dict | None = None  # per-layer diagnostics (stacked over layers by aggregate_layers)
    bytes_up: Any = None  # bytes per client, scalar or (m,); None: every factor of the client
    bytes_down: Any = None  # bytes per client, scalar or (m,); None: factors + base_delta


def _nbytes(x: Any, *, leading: int = 0) -> int:
    return int(np.prod(x.shape[leading:]) * x.dtype.itemsize)


def mean_broadcast(x: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_i p_i x_i`` repeated on the client axis: FedAvg of a dense leaf ``(m, ...)`` for an
    operator that returns one start per client."""
    return broadcast_to_clients(weighted_sum(x, weights), x.shape[0])


def stack_layer_diags(layer_diags: list[dict]) -> dict[str, jax.Array]:
    """Per-layer diagnostics stacked over the layers (leading axis ``L``, tree order).

    Entries of different shapes (per rank component of layers with different ranks) are
    zero-padded to the largest.
    """
    diag = {}
    if layer_diags:
        for key in layer_diags[0]:
            values = [jnp.asarray(dg[key]) for dg in layer_diags]
            shape = tuple(max(dims) for dims in zip(*(v.shape for v in values), strict=True))
            values = [
                v
                if v.shape == shape
                else jnp.pad(v, [(0, n - w) for n, w in zip(shape, v.shape, strict=True)])
                for v in values
            ]
            diag[key] = jnp.stack(values)
    return diag


def aggregate_layers(
    clients: Any,
    weights: jax.Array,
    lora_fn: Callable[[LoRAFactors, int], LayerResult],
    *,
    per_client: bool = False,
    dense_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[Broadcast, dict[str, jax.Array]]:
    """Runs an operator layer by layer over a client tree (a Python loop over layers, never clients).

    Args:
      clients: pytree with :class:`~abo_jax.LoRAFactors` nodes ``b (m, d, r)``, ``a (m, r, k)`` and
        optionally dense array leaves ``(m, ...)``; ``None`` = frozen.
      weights: ``(m,)``.
      lora_fn: ``(factors, layer_index) -> LayerResult`` for each LoRA node in tree order; its
        factors are one copy (``b (d, r)``, ``a (r, k)``) unless ``per_client``.
      per_client: the operator returns one start per client (personalized or heterogeneous-rank
        operators); by default the broadcast is one copy (a global operator).
      dense_fn: ``(leaf (m, ...), weights) -> broadcast leaf`` for the other leaves (default: the
        weighted mean, one copy or repeated per client as ``per_client`` says).

    Returns:
      ``(Broadcast, diag)``: ``base_delta`` is ``None`` when no layer returned one (else a tree like
      ``clients`` with ``(d, k)`` arrays or ``None``); ``diag`` stacks each per-layer entry over the
      layers (leading axis ``L``; entries of different shapes, e.g. per rank component of layers
      with different ranks, are zero-padded to the largest) and holds the total ``bytes_up`` /
      ``bytes_down`` per client.
    """
    if dense_fn is None:
        dense_fn = mean_broadcast if per_client else weighted_sum
    leading = 1 if per_client else 0
    nodes, treedef = jax.tree.flatten(clients, is_leaf=is_lora)
    out_factors, out_delta, layer_diags = [], [], []
    up, down = 0, 0
    layer = 0
    for x in nodes:
        if is_lora(x):
            res = lora_fn(x, layer)
            layer += 1
            out_factors.append(res.factors)
            out_delta.append(res.base_delta)
            layer_diags.append(res.diag or {})
            delta_bytes = 0 if res.base_delta is None else _nbytes(res.base_delta)
            up = up + (
                _nbytes(x.b, leading=1) + _nbytes(x.a, leading=1)
                if res.bytes_up is None
                else res.bytes_up
            )
            down = down + (
                _nbytes(res.factors.b, leading=leading)
                + _nbytes(res.factors.a, leading=leading)
                + delta_bytes
                if res.bytes_down is None
                else res.bytes_down
            )
        else:
            out_factors.append(dense_fn(x, weights))
            out_delta.append(None)
            up = up + _nbytes(x, leading=1)
            down = down + _nbytes(x, leading=1)
    factors = jax.tree.unflatten(treedef, out_factors)
    has_delta = any(d is not None for d in out_delta)
    base_delta = jax.tree.unflatten(treedef, out_delta) if has_delta else None
    diag = stack_layer_diags(layer_diags)
    diag["bytes_up"] = jnp.asarray(up, jnp.result_type(float))
    diag["bytes_down"] = jnp.asarray(down, jnp.result_type(float))
    return Broadcast(factors=factors, base_delta=base_delta), diag


def trainable_factors(state: Any) -> LoRAFactors:
    """Which factors clients train next round: ``LoRAFactors(b=bool[], a=bool[])`` scalar masks.

    Operators that freeze a factor (FFA-LoRA freezes ``A``; RoLoRA alternates) expose it through a
    ``trainable_factors()`` method of their state; every other operator trains both. The masks are
    arrays, so this works on traced states inside a jitted round.

    Example:
      >>> trainable_factors(EmptyState())
      LoRAFactors(b=Array(True, dtype=bool), a=Array(True, dtype=bool))
    """
    method = getattr(state, "trainable_factors", None)
    if method is None:
        return LoRAFactors(b=jnp.array(True), a=jnp.array(True))
    return method()


def freeze_factors(tree: Any, trainable: LoRAFactors) -> Any:
    """Zeroes the frozen factor in every :class:`~abo_jax.LoRAFactors` node of ``tree``.

    Apply it to the optimizer's *updates* (after momentum and weight decay), not only to gradients:
    weight decay or momentum would otherwise move a frozen factor. Other leaves pass through.

    Args:
      tree: a pytree (gradients or updates) with ``LoRAFactors`` nodes of any leading axes.
      trainable: from :func:`trainable_factors` (scalar bools; traced values are fine).
    """

    def one(x):
        if not is_lora(x):
            return x
        return LoRAFactors(
            b=jnp.where(trainable.b, x.b, jnp.zeros_like(x.b)),
            a=jnp.where(trainable.a, x.a, jnp.zeros_like(x.a)),
        )

    return jax.tree.map(one, tree, is_leaf=is_lora)


def validate_client_ranks(client_ranks: Any) -> Any:
    """Factory-time check of ``client_ranks``: ``(m,)`` positive integers, or a pytree of them.

    Returns:
      ``client_ranks`` with every leaf converted to a NumPy int array (static, never traced).

    Raises:
      ValueError: naming ``client_ranks``.
    """

    def check(x):
        if isinstance(x, jax.core.Tracer):
            raise ValueError("client_ranks: must be concrete (a factory argument), not traced")
        arr = np.asarray(x)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"client_ranks: expected a 1-D (m,) array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise ValueError(f"client_ranks: must be integers, got {arr}")
        arr = arr.astype(np.int64)
        if np.any(arr < 1):
            raise ValueError(f"client_ranks: every rank must be >= 1, got {arr}")
        return arr

    if isinstance(client_ranks, (list, tuple, np.ndarray, jax.Array)):
        return check(client_ranks)
    return jax.tree.map(check, client_ranks)


def layer_client_ranks(client_ranks: Any, clients: Any) -> list[np.ndarray]:
    """Per-layer ``(m,)`` ranks in tree order of the LoRA nodes of ``clients``, checked.

    ``client_ranks`` is one ``(m,)`` array for every layer, or a pytree mirroring ``clients`` with an
    ``(m,)`` array at every LoRA node (``None`` elsewhere). Runs at trace time (ranks are static).

    Raises:
      ValueError: naming ``client_ranks`` when its length is not ``m`` or a rank exceeds the padded
        rank ``r_max`` or ``min(d, k)`` of a layer.
    """
    factors = lora_leaves(clients)
    if isinstance(client_ranks, np.ndarray):
        per_layer = [client_ranks] * len(factors)
    else:
        per_layer = jax.tree.leaves(client_ranks)
        if len(per_layer) != len(factors):
            raise ValueError(
                f"client_ranks: a pytree of ranks needs one (m,) array per LoRA layer "
                f"({len(factors)}), got {len(per_layer)}"
            )
    for i, (ranks, f) in enumerate(zip(per_layer, factors, strict=True)):
        m, d, r_max = f.b.shape[-3:]
        k = f.a.shape[-1]
        if ranks.shape != (m,):
            raise ValueError(
                f"client_ranks: layer #{i} needs one rank per client, shape ({m},); got {ranks.shape}"
            )
        limit = min(r_max, d, k)
        if np.any(ranks > limit):
            raise ValueError(
                f"client_ranks: layer #{i} ranks {ranks} exceed min(r_max, d, k) = {limit} "
                f"(r_max = {r_max}, weight ({d}, {k}))"
            )
    return [np.asarray(r) for r in per_layer]


def client_scales(ranks: np.ndarray, alpha: float | None) -> np.ndarray:
    """Per-client LoRA scales ``s_i = alpha / r_i`` (all 1 when ``alpha`` is None)."""
    if alpha is None:
        return np.ones(ranks.shape, np.float64)
    return float(alpha) / ranks.astype(np.float64)


def check_alpha(alpha: float | None) -> float | None:
    """Factory-time check of a LoRA ``alpha`` (None or a positive finite float)."""
    if alpha is None:
        return None
    a = float(alpha)
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"alpha: must be None or a positive finite number, got {alpha!r}")
    return a


def check_scale(scale: float) -> float:
    """Factory-time check of a LoRA ``scale`` (a finite number)."""
    s = float(scale)
    if not np.isfinite(s):
        raise ValueError(f"scale: must be finite, got {scale!r}")
    return s
