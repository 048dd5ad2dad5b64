r"""Mismatch functionals of an aggregation-broadcast round: weak, strong, optimal values, tails.

This is **our formalization** of the convergence conditions of Chen et al., *Convergence Analysis of
Aggregation-Broadcast in LoRA-enabled Federated Learning*, arXiv:2508.01348 (see DESIGN.md,
"Convergence theory as code"). The paper's theorems are not quoted here; the definitions below are
ours and every function states its formula.

Per round and per adapted layer, with the clients' factors after local training ``B_i (d, r)``,
``A_i (r, k)``, weights ``p_i`` and the broadcast ``(P, Q)``:

.. math::
    R_w = \sum_i p_i \|P Q - B_i A_i\|_F^2, \qquad
    R_B = \sum_i p_i \|P - B_i\|_F^2, \qquad R_A = \sum_i p_i \|Q - A_i\|_F^2 .

Conventions shared by every function here:

* ``clients``: a pytree with :class:`~abo_jax.LoRAFactors` leaves ``b (m, d, r)``, ``a (m, r, k)``.
* ``weights``: ``(m,)``; the identities of DESIGN.md assume ``sum p_i = 1``, the functions just use
  the weights given.
* ``broadcast``: an :class:`abo_jax.Broadcast` or a pytree of factors with the clients' structure,
  either un-stacked (``(d, r)``, ``(r, k)``: one global broadcast) or stacked per client
  (``(m, d, r)``, ``(m, r, k)``: personalized operators, client ``i`` compared with ``(P_i, Q_i)``).
  A ``base_delta`` (dense ``(d, k)`` or ``(m, d, k)``, already multiplied by the LoRA scale ``s``)
  counts in the product: the effective broadcast product is ``P Q + base_delta / s``.
* Scalar functionals return :class:`PerLayer` ``(total, layers)``: ``layers`` is ``(L,)`` in tree
  order, ``total`` their sum (for the factor norms: the whole-tree norm, see :func:`factor_norms`).
* Everything is ``jax.jit``- and ``jax.vmap``-compatible; shapes are checked at trace time, values
  (finiteness) only when the inputs are concrete.

Norms ``\|X Y\|_F^2`` of low-rank products are computed without forming ``d x k`` when that is
cheaper: from the QR factorization of the stacked left factor (``\|L R\|_F = \|R_L R\|_F``), which
keeps dense-level accuracy (no squared cancellation as in trace identities with Gram matrices).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax import Broadcast, LoRAFactors, is_lora
from abo_jax.aggregation import sp_svd
from abo_jax.linalg import svd
from abo_jax.lora import lora_leaves

__all__ = [
    "PerLayer",
    "weak_mismatch",
    "strong_mismatch",
    "weak_optimum",
    "strong_optimum",
    "sp_tail",
    "ps_aggregation_error",
    "ps_aggregation_error_norm",
    "product_error",
    "factor_error",
    "factor_norms",
    "strong_to_weak_bound",
    "round_metrics",
    "ROUND_METRIC_NAMES",
]


class PerLayer(NamedTuple):
    """A functional's value summed over layers and per layer."""

    total: jax.Array  # () float: sum over layers (max-type norms: the whole-tree value)
    layers: jax.Array  # (L,) float: one value per adapted layer, tree order


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def _concrete(*trees: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for t in trees for x in jax.tree.leaves(t))


def _split_broadcast(broadcast: Any, base_delta: Any) -> tuple[Any, Any]:
    if isinstance(broadcast, Broadcast):
        if base_delta is not None:
            raise ValueError("base_delta: given twice (in the Broadcast and as an argument)")
        return broadcast.factors, broadcast.base_delta
    return broadcast, base_delta


def _client_layers(clients: Any, weights: Any) -> tuple[list[LoRAFactors], jax.Array]:
    layers = lora_leaves(clients)
    if not layers:
        raise ValueError("clients: no LoRAFactors leaves found")
    weights = jnp.asarray(weights)
    for i, f in enumerate(layers):
        if f.b.ndim != 3 or f.a.ndim != 3:
            raise ValueError(
                f"clients: LoRAFactors #{i} must have b (m, d, r) and a (m, r, k); "
                f"got b {f.b.shape}, a {f.a.shape}"
            )
        if f.b.shape[0] != f.a.shape[0] or f.b.shape[2] != f.a.shape[1]:
            raise ValueError(
                f"clients: LoRAFactors #{i} has inconsistent shapes b {f.b.shape}, a {f.a.shape}"
            )
    m = layers[0].b.shape[0]
    if any(f.b.shape[0] != m for f in layers):
        raise ValueError(
            f"clients: layers disagree on the client axis: {[f.b.shape[0] for f in layers]}"
        )
    if weights.shape != (m,):
        raise ValueError(f"weights: expected shape ({m},) (one per client), got {weights.shape}")
    if _concrete(clients, weights):
        if not all(bool(np.all(np.isfinite(np.asarray(x)))) for f in layers for x in f):
            raise ValueError("clients: contain NaN or Inf values")
        if not bool(np.all(np.isfinite(np.asarray(weights)))):
            raise ValueError(f"weights: must be finite, got {weights}")
    return layers, weights


def _delta_leaves(clients: Any, base_delta: Any, n_layers: int) -> list[jax.Array | None]:
    """``base_delta`` entries aligned with the clients' LoRA layers (``None`` where there is none)."""
    if base_delta is None:
        return [None] * n_layers
    nodes, treedef = jax.tree.flatten(clients, is_leaf=is_lora)
    try:  # a tree like ``clients`` (the ABO convention): None where a layer has no correction
        aligned = treedef.flatten_up_to(base_delta)
        return [x for x, node in zip(aligned, nodes, strict=True) if is_lora(node)]
    except (ValueError, TypeError):
        deltas = jax.tree.leaves(base_delta)
        if len(deltas) != n_layers:
            raise ValueError(
                f"base_delta: has {len(deltas)} array leaves but clients have {n_layers} layers"
            ) from None
        return list(deltas)


def _broadcast_layers(
    factors: Any, base_delta: Any, layers: list[LoRAFactors], clients: Any = None
) -> tuple[list[LoRAFactors], list[jax.Array | None]]:
    bc = lora_leaves(factors)
    if len(bc) != len(layers):
        raise ValueError(
            f"broadcast: has {len(bc)} LoRAFactors leaves but clients have {len(layers)}"
        )
    for i, (p, f) in enumerate(zip(bc, layers, strict=True)):
        m = f.b.shape[0]
        ok = (p.b.shape == f.b.shape[1:] and p.a.shape == f.a.shape[1:]) or (
            p.b.shape == f.b.shape and p.a.shape == f.a.shape
        )
        if not ok:
            raise ValueError(
                f"broadcast: layer #{i} has P {p.b.shape}, Q {p.a.shape}; clients have "
                f"B {f.b.shape}, A {f.a.shape} (expected P {f.b.shape[1:]} or {(m, *f.b.shape[1:])})"
            )
    deltas = _delta_leaves(clients, base_delta, len(layers))
    for i, (x, f) in enumerate(zip(deltas, layers, strict=True)):
        if x is None:
            continue
        d, k = f.b.shape[1], f.a.shape[2]
        if x.shape not in ((d, k), (f.b.shape[0], d, k)):
            raise ValueError(f"base_delta: layer #{i} has shape {x.shape}, expected ({d}, {k})")
    if _concrete(bc, deltas):
        arrays = [x for p in bc for x in p] + [x for x in deltas if x is not None]
        if not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in arrays):
            raise ValueError("broadcast: contains NaN or Inf values")
    return bc, deltas


def _per_client(x: jax.Array, m: int, ndim: int) -> jax.Array:
    """``x`` with a leading client axis of size ``m`` (a broadcast view if it had none)."""
    return x if x.ndim == ndim + 1 else jnp.broadcast_to(x[None], (m, *x.shape))


def _per_layer(values: list[jax.Array]) -> PerLayer:
    layers = jnp.stack(values)
    return PerLayer(total=jnp.sum(layers), layers=layers)


# ---------------------------------------------------------------------------------------------
# Low-rank norms
# ---------------------------------------------------------------------------------------------


def _lowrank_sqnorm(left: jax.Array, right: jax.Array) -> jax.Array:
    """``||left @ right||_F^2`` for ``left (d, q)``, ``right (q, k)``, dense only when cheaper."""
    d, q = left.shape
    k = right.shape[1]
    if d * k <= q * (d + k) or q >= d:
        return jnp.sum(jnp.square(left @ right))
    _, r_left = jnp.linalg.qr(left)  # (q, q); ||L R|| = ||R_L R|| since Q_L has orthonormal columns
    return jnp.sum(jnp.square(r_left @ right))


def _spectral_norms(x: jax.Array) -> jax.Array:
    """Largest singular value of each matrix of ``x (m, n, p)`` (abo_jax.linalg.svd: the CPU-safe
    SVD; ``jnp.linalg.norm(ord=2)`` would call jaxlib's SVD kernel, see abo_jax.linalg)."""
    return jax.vmap(lambda a: svd(a, compute_uv=False)[0])(x)


def _stacked(f: LoRAFactors, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``Zbar = Bs @ As`` with ``Bs = [p_1 B_1 ... p_m B_m]`` ``(d, m r)``, ``As`` ``(m r, k)``."""
    m, d, r = f.b.shape
    w = weights.astype(f.b.dtype)
    bs = jnp.transpose(w[:, None, None] * f.b, (1, 0, 2)).reshape(d, m * r)
    return bs, f.a.reshape(m * r, f.a.shape[2])


def _zbar(f: LoRAFactors, weights: jax.Array) -> jax.Array:
    return jnp.einsum("c,cdr,crk->dk", weights.astype(f.b.dtype), f.b, f.a)


def _product_mismatch(
    p: jax.Array, q: jax.Array, delta: jax.Array | None, b: jax.Array, a: jax.Array
) -> jax.Array:
    """``||P Q + delta - B A||_F^2`` for one client (``delta`` already divided by the scale)."""
    if delta is None:
        return _lowrank_sqnorm(jnp.concatenate([p, -b], axis=1), jnp.concatenate([q, a], axis=0))
    return jnp.sum(jnp.square(p @ q + delta - b @ a))


# ---------------------------------------------------------------------------------------------
# Functionals
# ---------------------------------------------------------------------------------------------


def weak_mismatch(
    clients: Any, weights: Any, broadcast: Any, *, base_delta: Any = None, scale: float = 1.0
) -> PerLayer:
    r"""Weak (product) mismatch ``R_w`` of a broadcast against the clients.

    .. math::
        R_w = \sum_i p_i \big\|P_i Q_i + \Delta_i / s - B_i A_i\big\|_F^2

    with ``(P_i, Q_i) = (P, Q)`` for a global broadcast and ``\Delta_i`` the ``base_delta`` (zero when
    absent).

    Args:
      clients: pytree of :class:`~abo_jax.LoRAFactors`, ``b (m, d, r)``, ``a (m, r, k)``.
      weights: ``(m,)``.
      broadcast: :class:`abo_jax.Broadcast` or factors tree, ``(d, r)/(r, k)`` or stacked ``(m, ...)``.
      base_delta: dense correction tree (``(d, k)`` or ``(m, d, k)`` leaves) if ``broadcast`` is a
        factors tree.
      scale: the LoRA scale ``s`` the ``base_delta`` was multiplied by.

    Returns:
      :class:`PerLayer` of ``R_w``.

    Example:
      >>> f = LoRAFactors(jnp.ones((2, 3, 1)), jnp.ones((2, 1, 2)))
      >>> float(weak_mismatch({"w": f}, jnp.array([.5, .5]), {"w": LoRAFactors(f.b[0], f.a[0])}).total)
      0.0

    References:
      Chen et al., arXiv:2508.01348 (weak convergence condition; our formalization).
    """
    factors, base_delta = _split_broadcast(broadcast, base_delta)
    layers, weights = _client_layers(clients, weights)
    bc, deltas = _broadcast_layers(factors, base_delta, layers, clients)
    values = []
    for f, pq, delta in zip(layers, bc, deltas, strict=True):
        m = f.b.shape[0]
        p, q = _per_client(pq.b, m, 2), _per_client(pq.a, m, 2)
        if delta is None:
            per = jax.vmap(lambda p, q, b, a: _product_mismatch(p, q, None, b, a))(p, q, f.b, f.a)
        else:
            dl = _per_client(delta / scale, m, 2)
            per = jax.vmap(_product_mismatch)(p, q, dl, f.b, f.a)
        values.append(jnp.dot(weights.astype(per.dtype), per))
    return _per_layer(values)


def strong_mismatch(clients: Any, weights: Any, broadcast: Any) -> tuple[PerLayer, PerLayer]:
    r"""Strong (factor) mismatch ``(R_B, R_A)``.

    .. math::
        R_B = \sum_i p_i \|P_i - B_i\|_F^2, \qquad R_A = \sum_i p_i \|Q_i - A_i\|_F^2 .

    A ``base_delta`` does not enter (it is not a factor).

    Args:
      clients: pytree of :class:`~abo_jax.LoRAFactors`, ``b (m, d, r)``, ``a (m, r, k)``.
      weights: ``(m,)``.
      broadcast: :class:`abo_jax.Broadcast` or factors tree (un-stacked or stacked per client).

    Returns:
      ``(R_B, R_A)``, two :class:`PerLayer`.

    References:
      Chen et al., arXiv:2508.01348 (strong convergence condition; our formalization).
    """
    factors, _ = _split_broadcast(broadcast, None)
    layers, weights = _client_layers(clients, weights)
    bc, _ = _broadcast_layers(factors, None, layers)
    rb, ra = [], []
    for f, pq in zip(layers, bc, strict=True):
        m = f.b.shape[0]
        w = weights.astype(f.b.dtype)
        rb.append(jnp.dot(w, jnp.sum(jnp.square(_per_client(pq.b, m, 2) - f.b), axis=(1, 2))))
        ra.append(jnp.dot(w, jnp.sum(jnp.square(_per_client(pq.a, m, 2) - f.a), axis=(1, 2))))
    return _per_layer(rb), _per_layer(ra)


def weak_optimum(clients: Any, weights: Any) -> PerLayer:
    r"""The smallest weak mismatch over all broadcasts, ``R_w^*`` (attained by ``P Q = \bar Z``).

    .. math::
        R_w^* = \sum_i p_i \|\bar Z - B_i A_i\|_F^2, \qquad \bar Z = \sum_i p_i B_i A_i .

    Computed from the stacked factors (``\bar Z - B_i A_i = [B_s, -B_i][A_s; A_i]``) when that is
    cheaper than forming ``\bar Z``.

    Returns:
      :class:`PerLayer` of ``R_w^*``.
    """
    layers, weights = _client_layers(clients, weights)
    values = []
    for f in layers:
        m, d, r = f.b.shape
        k = f.a.shape[2]
        w = weights.astype(f.b.dtype)
        if d * k <= (m + 1) * r * (d + k):
            zbar = _zbar(f, weights)
            per = jnp.sum(jnp.square(zbar[None] - jnp.einsum("cdr,crk->cdk", f.b, f.a)), (1, 2))
        else:
            bs, as_ = _stacked(f, weights)
            per = jax.vmap(
                lambda b, a, bs=bs, as_=as_: _lowrank_sqnorm(
                    jnp.concatenate([bs, -b], 1), jnp.concatenate([as_, a], 0)
                )
            )(f.b, f.a)
        values.append(jnp.dot(w, per))
    return _per_layer(values)


def strong_optimum(clients: Any, weights: Any) -> tuple[PerLayer, PerLayer]:
    r"""The smallest strong mismatch ``(R_B^*, R_A^*)``, attained by PS ``(\bar B, \bar A)``.

    .. math::
        R_B^* = \sum_i p_i \|B_i - \bar B\|_F^2, \qquad R_A^* = \sum_i p_i \|A_i - \bar A\|_F^2,
        \qquad \bar B = \sum_i p_i B_i,\ \bar A = \sum_i p_i A_i .

    Returns:
      ``(R_B^*, R_A^*)``, two :class:`PerLayer`.
    """
    layers, weights = _client_layers(clients, weights)
    rb, ra = [], []
    for f in layers:
        w = weights.astype(f.b.dtype)
        b_bar = jnp.einsum("c,cdr->dr", w, f.b)
        a_bar = jnp.einsum("c,crk->rk", w, f.a)
        rb.append(jnp.dot(w, jnp.sum(jnp.square(f.b - b_bar[None]), axis=(1, 2))))
        ra.append(jnp.dot(w, jnp.sum(jnp.square(f.a - a_bar[None]), axis=(1, 2))))
    return _per_layer(rb), _per_layer(ra)


def sp_tail(clients: Any, weights: Any, rank: int | None = None) -> PerLayer:
    r"""The SP truncation tail: the energy of ``\bar Z`` beyond rank ``r``.

    .. math::
        \mathrm{tail}_r = \sum_{j > r} s_j(\bar Z)^2 = \min_{\mathrm{rank}(X) \le r} \|\bar Z - X\|_F^2

    (Eckart-Young), from the stacked factors when ``m r < min(d, k)`` (via :func:`abo_jax.aggregation.sp_svd`).

    Args:
      clients: pytree of :class:`~abo_jax.LoRAFactors`.
      weights: ``(m,)``.
      rank: truncation rank (default: each layer's ``r``).

    Returns:
      :class:`PerLayer` of the tail.
    """
    layers, weights = _client_layers(clients, weights)
    values = []
    for f in layers:
        r = f.b.shape[2] if rank is None else int(rank)
        if r < 1:
            raise ValueError(f"rank: must be >= 1, got {rank}")
        _, s, _ = sp_svd(f.b, f.a, weights.astype(f.b.dtype))
        values.append(jnp.sum(jnp.square(s[r:])))
    return _per_layer(values)


def ps_aggregation_error(clients: Any, weights: Any) -> list[jax.Array]:
    r"""The PS aggregation error per layer, in its covariance form (no cancellation).

    .. math::
        \bar Z - \bar B \bar A = \sum_i p_i (B_i - \bar B)(A_i - \bar A)

    (DESIGN.md identity 4, valid when ``sum p_i = 1``).

    Returns:
      A list (tree order) of ``(d, k)`` matrices.
    """
    layers, weights = _client_layers(clients, weights)
    out = []
    for f in layers:
        w = weights.astype(f.b.dtype)
        bc = f.b - jnp.einsum("c,cdr->dr", w, f.b)[None]
        ac = f.a - jnp.einsum("c,crk->rk", w, f.a)[None]
        out.append(jnp.einsum("c,cdr,crk->dk", w, bc, ac))
    return out


def ps_aggregation_error_norm(clients: Any, weights: Any) -> PerLayer:
    r"""``\|\bar Z - \bar B \bar A\|_F^2`` per layer, from the centred stacked factors.

    .. math::
        \Big\|\sum_i p_i (B_i - \bar B)(A_i - \bar A)\Big\|_F^2

    Returns:
      :class:`PerLayer`.
    """
    layers, weights = _client_layers(clients, weights)
    values = []
    for f in layers:
        w = weights.astype(f.b.dtype)
        centred = LoRAFactors(
            b=f.b - jnp.einsum("c,cdr->dr", w, f.b)[None],
            a=f.a - jnp.einsum("c,crk->rk", w, f.a)[None],
        )
        values.append(_lowrank_sqnorm(*_stacked(centred, weights)))
    return _per_layer(values)


def product_error(
    clients: Any, weights: Any, broadcast: Any, *, base_delta: Any = None, scale: float = 1.0
) -> PerLayer:
    r"""How far the broadcast product is from the average product (the server's product error).

    .. math::
        \sum_i p_i \big\|P_i Q_i + \Delta_i / s - \bar Z\big\|_F^2
        \;(= \|P Q + \Delta/s - \bar Z\|_F^2 \text{ for a global broadcast})

    By DESIGN.md identity 1, ``R_w = R_w^* + `` this, for a global broadcast.

    Returns:
      :class:`PerLayer`.
    """
    factors, base_delta = _split_broadcast(broadcast, base_delta)
    layers, weights = _client_layers(clients, weights)
    bc, deltas = _broadcast_layers(factors, base_delta, layers, clients)
    values = []
    for f, pq, delta in zip(layers, bc, deltas, strict=True):
        m = f.b.shape[0]
        w = weights.astype(f.b.dtype)
        stacked_p = pq.b.ndim == 3
        if delta is None and not stacked_p:
            bs, as_ = _stacked(f, weights)
            value = _lowrank_sqnorm(
                jnp.concatenate([pq.b, -bs], 1), jnp.concatenate([pq.a, as_], 0)
            )
        else:
            zbar = _zbar(f, weights)
            prod = jnp.einsum("...dr,...rk->...dk", pq.b, pq.a)
            if delta is not None:
                dl = delta / scale
                if prod.ndim < dl.ndim:
                    prod = prod[None]
                elif dl.ndim < prod.ndim:
                    dl = dl[None]
                prod = prod + dl
            if prod.ndim == 2:
                value = jnp.sum(jnp.square(prod - zbar))
            else:
                value = jnp.dot(w, jnp.sum(jnp.square(prod - zbar[None]), axis=(1, 2)))
        del m
        values.append(value)
    return _per_layer(values)


def factor_error(clients: Any, weights: Any, broadcast: Any) -> tuple[PerLayer, PerLayer]:
    r"""How far the broadcast factors are from the factor averages (the server's factor error).

    .. math::
        \sum_i p_i \|P_i - \bar B\|_F^2, \qquad \sum_i p_i \|Q_i - \bar A\|_F^2

    By DESIGN.md identity 5, ``R_B = R_B^* + `` the first (and likewise for ``A``).

    Returns:
      ``(B part, A part)``, two :class:`PerLayer`.
    """
    factors, _ = _split_broadcast(broadcast, None)
    layers, weights = _client_layers(clients, weights)
    bc, _ = _broadcast_layers(factors, None, layers)
    eb, ea = [], []
    for f, pq in zip(layers, bc, strict=True):
        m = f.b.shape[0]
        w = weights.astype(f.b.dtype)
        b_bar = jnp.einsum("c,cdr->dr", w, f.b)
        a_bar = jnp.einsum("c,crk->rk", w, f.a)
        eb.append(jnp.dot(w, jnp.sum(jnp.square(_per_client(pq.b, m, 2) - b_bar[None]), (1, 2))))
        ea.append(jnp.dot(w, jnp.sum(jnp.square(_per_client(pq.a, m, 2) - a_bar[None]), (1, 2))))
    return _per_layer(eb), _per_layer(ea)


def factor_norms(clients: Any, weights: Any) -> tuple[PerLayer, PerLayer]:
    r"""The bounded-factor constants (the paper's Assumption 3) measured on this round.

    .. math::
        C_A = \max_{i: p_i > 0} \|A_i\|_F, \qquad C_B = \max_{i: p_i > 0} \|B_i\|_F

    per layer; ``total`` is the whole-tree value ``max_i (\sum_l \|A^{(l)}_i\|_F^2)^{1/2}``.
    Clients of weight 0 (not in the round) are ignored.

    Returns:
      ``(C_A, C_B)``, two :class:`PerLayer`.
    """
    layers, weights = _client_layers(clients, weights)
    live = weights > 0

    def norms(xs):
        sq = jnp.stack([jnp.sum(jnp.square(x), axis=(1, 2)) for x in xs], axis=1)  # (m, L)
        sq = jnp.where(live[:, None], sq, 0.0)
        return PerLayer(total=jnp.sqrt(jnp.max(jnp.sum(sq, 1))), layers=jnp.sqrt(jnp.max(sq, 0)))

    return norms([f.a for f in layers]), norms([f.b for f in layers])


def strong_to_weak_bound(clients: Any, weights: Any, broadcast: Any) -> PerLayer:
    r"""An upper bound on ``R_w`` from the factor mismatch (DESIGN.md identity 6).

    From ``P Q - B_i A_i = (P - B_i) Q + B_i (Q - A_i)``:

    .. math::
        R_w \le \sum_i p_i \big(\|P - B_i\|_F \|Q\|_2 + \|B_i\|_2 \|Q - A_i\|_F\big)^2
            \le 2 \|Q\|_2^2 R_B + 2 C_B^2 R_A .

    This returns the middle expression (a ``base_delta`` is not a factor and is not included).

    Returns:
      :class:`PerLayer` of the bound.
    """
    factors, _ = _split_broadcast(broadcast, None)
    layers, weights = _client_layers(clients, weights)
    bc, _ = _broadcast_layers(factors, None, layers)
    values = []
    for f, pq in zip(layers, bc, strict=True):
        m = f.b.shape[0]
        p, q = _per_client(pq.b, m, 2), _per_client(pq.a, m, 2)
        db = jnp.sqrt(jnp.sum(jnp.square(p - f.b), axis=(1, 2)))
        da = jnp.sqrt(jnp.sum(jnp.square(q - f.a), axis=(1, 2)))
        q2 = _spectral_norms(q)
        b2 = _spectral_norms(f.b)
        values.append(jnp.dot(weights.astype(f.b.dtype), jnp.square(db * q2 + b2 * da)))
    return _per_layer(values)


ROUND_METRIC_NAMES = (
    "weak_mismatch",
    "strong_mismatch_b",
    "strong_mismatch_a",
    "weak_optimum",
    "strong_optimum_b",
    "strong_optimum_a",
    "product_error",
    "factor_error_b",
    "factor_error_a",
    "sp_tail",
    "ps_error",
    "c_a",
    "c_b",
    "strong_to_weak_bound",
)


def round_metrics(clients: Any, weights: Any, broadcast: Any, *, scale: float = 1.0) -> dict:
    r"""Every functional of this module for one round, for the simulator's ``metrics_fn`` hook.

    Call it inside the jitted round as ``metrics_fn(clients, weights, broadcast)`` with the clients'
    factors after local training and the :class:`abo_jax.Broadcast` the operator returned.

    Args:
      clients: pytree of :class:`~abo_jax.LoRAFactors`, ``b (m, d, r)``, ``a (m, r, k)``.
      weights: ``(m,)``.
      broadcast: :class:`abo_jax.Broadcast` (or a factors tree).
      scale: LoRA scale that ``base_delta`` was multiplied by.

    Returns:
      A dict of arrays: for every name in :data:`ROUND_METRIC_NAMES` a scalar (summed over layers;
      for ``c_a``, ``c_b`` the whole-tree norm) and ``name + "_layers"`` of shape ``(L,)``.
      ``weak_mismatch`` is ``R_w``, ``strong_mismatch_b/a`` are ``R_B, R_A``, ``weak_optimum`` is
      ``R_w^*``, ``strong_optimum_b/a`` are ``R_B^*, R_A^*``, ``product_error`` is
      ``\|PQ + \Delta/s - \bar Z\|^2``, ``factor_error_b/a`` are ``\|P - \bar B\|^2``,
      ``\|Q - \bar A\|^2``, ``sp_tail`` is ``tail_r``, ``ps_error`` is ``\|\bar Z - \bar B\bar A\|^2``.
    """
    factors, base_delta = _split_broadcast(broadcast, None)
    rb, ra = strong_mismatch(clients, weights, factors)
    sb, sa = strong_optimum(clients, weights)
    eb, ea = factor_error(clients, weights, factors)
    c_a, c_b = factor_norms(clients, weights)
    values = {
        "weak_mismatch": weak_mismatch(
            clients, weights, factors, base_delta=base_delta, scale=scale
        ),
        "strong_mismatch_b": rb,
        "strong_mismatch_a": ra,
        "weak_optimum": weak_optimum(clients, weights),
        "strong_optimum_b": sb,
        "strong_optimum_a": sa,
        "product_error": product_error(
            clients, weights, factors, base_delta=base_delta, scale=scale
        ),
        "factor_error_b": eb,
        "factor_error_a": ea,
        "sp_tail": sp_tail(clients, weights),
        "ps_error": ps_aggregation_error_norm(clients, weights),
        "c_a": c_a,
        "c_b": c_b,
        "strong_to_weak_bound": strong_to_weak_bound(clients, weights, factors),
    }
    out = {}
    for name in ROUND_METRIC_NAMES:
        out[name] = values[name].total
        out[name + "_layers"] = values[name].layers
    return out
