"""Sum-Product (SP): average the products, broadcast their best rank-r factorization.

Reference: Chen et al., arXiv:2508.01348 (SP/PS naming); FlexLoRA (Bai et al., arXiv:2402.11505) is
this operator with per-client truncation ranks.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    aggregate_layers,
    make_abo,
    stateless_init,
)
from abo_jax.aggregation._streamed import linear_streamed
from abo_jax.linalg import qr, svd
from abo_jax.lora import LoRAFactors

__all__ = ["sum_product", "sp_svd", "stacked_svd", "svd_from_stacked", "split_svd"]

Split = Literal["sqrt", "left", "right"]


def stacked_svd(b: jax.Array, a: jax.Array, weights: jax.Array):
    """Thin SVD of ``Zbar = sum_i p_i B_i A_i`` from the stacked factors, never forming ``d x k``.

    With ``Bs = [p_1 B_1 ... p_m B_m]`` ``(d, m r)`` and ``As = [A_1; ...; A_m]`` ``(m r, k)``,
    ``Zbar = Bs As``; QR of ``Bs`` and of ``As^T`` leaves an ``(m r, m r)`` core whose SVD gives
    Zbar's. Valid when ``m r <= min(d, k)``.

    Args:
      b: ``(m, d, r)``.
      a: ``(m, r, k)``.
      weights: ``(m,)``.

    Returns:
      ``u (d, m r)``, ``s (m r,)`` descending, ``vt (m r, k)`` with ``Zbar = u diag(s) vt``.
    """
    m, d, r = b.shape
    k = a.shape[-1]
    bs = jnp.transpose(weights.astype(b.dtype)[:, None, None] * b, (1, 0, 2)).reshape(d, m * r)
    return svd_from_stacked(bs, a.reshape(m * r, k))


def svd_from_stacked(bs: jax.Array, as_: jax.Array):
    """Thin SVD of ``bs @ as_`` (``(d, n) @ (n, k)``, ``n <= min(d, k)``) without forming it.

    Returns:
      ``u (d, n)``, ``s (n,)`` descending, ``vt (n, k)``.
    """
    qb, rb = qr(bs)  # (d, n), (n, n)
    qa, ra = qr(as_.T)  # (k, n), (n, n)
    u_core, s, vt_core = svd(rb @ ra.T)
    return qb @ u_core, s, vt_core @ qa.T


def sp_svd(b: jax.Array, a: jax.Array, weights: jax.Array):
    """SVD of ``Zbar`` by the cheapest exact path (stacked when ``m r < min(d, k)``, else dense).

    Returns:
      ``u (d, q)``, ``s (q,)``, ``vt (q, k)`` with ``q = min(m r, d, k)``.
    """
    m, d, r = b.shape
    k = a.shape[-1]
    if m * r < min(d, k):
        return stacked_svd(b, a, weights)
    zbar = jnp.einsum("c,cdr,crk->dk", weights.astype(b.dtype), b, a)
    return svd(zbar)


def split_svd(u, s, vt, rank: int, r_out: int, split: Split = "sqrt") -> LoRAFactors:
    """Rank-``rank`` factors of ``u diag(s) vt``, zero-padded to ``r_out`` columns.

    ``split="sqrt"``: ``(U sqrt(S), sqrt(S) V^T)``; ``"left"``: ``(U S, V^T)``; ``"right"``:
    ``(U, S V^T)``.
    """
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    short = rank - s.shape[0]  # the SVD may have fewer than `rank` components: pad with zeros
    if short > 0:
        u = jnp.pad(u, ((0, 0), (0, short)))
        s = jnp.pad(s, (0, short))
        vt = jnp.pad(vt, ((0, short), (0, 0)))
    if split == "sqrt":
        root = jnp.sqrt(s)
        p, q = u * root[None], root[:, None] * vt
    elif split == "left":
        p, q = u * s[None], vt
    elif split == "right":
        p, q = u, s[:, None] * vt
    else:
        raise ValueError(f"split must be 'sqrt', 'left' or 'right', got {split!r}")
    pad = r_out - p.shape[-1]
    if pad > 0:
        p = jnp.pad(p, ((0, 0), (0, pad)))
        q = jnp.pad(q, ((0, pad), (0, 0)))
    return LoRAFactors(b=p, a=q)


def sum_product(rank: int | None = None, split: Split = "sqrt") -> ABO:
    r"""SP (Sum-Product): the best rank-r factorization of the average product.

    .. math::
        \bar Z = \sum_i p_i B_i A_i, \qquad P Q = \mathrm{SVD}_r(\bar Z),\quad
        P = U_r S_r^{1/2},\ Q = S_r^{1/2} V_r^\top .

    Computed from the stacked factors (QR of ``[p_1 B_1 ... p_m B_m]`` and ``[A_1; ...; A_m]^T``, SVD
    of the small core) when ``sum_i r_i = m r < min(d, k)``, so the ``d x k`` matrix is never formed;
    by a dense SVD otherwise. Every client receives the same ``(P, Q)``. Its streamed form
    (``abo.streamed``) accumulates ``Zbar`` over client groups and takes the dense SVD once. SP satisfies the weak
    convergence condition (arXiv:2508.01348); its factors are re-gauged by the SVD each round.

    Args:
      rank: broadcast rank (default: the clients' rank ``r``); lower ranks are zero-padded to ``r``.
      split: how singular values are split between the factors (``"sqrt"``, ``"left"``,
        ``"right"``).

    Returns:
      An :class:`ABO`. Diagnostics: ``sp_tail`` ``(L,)``, the discarded energy
      ``sum_{j > rank} s_j(Zbar)^2`` per adapted layer (tree order), plus ``finite``, ``bytes_up``
      (``r (d + k)`` values per layer), ``bytes_down`` (same).

    Example:
      >>> b = jnp.ones((2, 4, 1)); a = jnp.ones((2, 1, 3))
      >>> bc, _, diag = sum_product().aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> bc.factors["w"].b.shape  # one copy for every client
      (4, 1)

    References:
      Chen et al., arXiv:2508.01348; Bai et al. (FlexLoRA), arXiv:2402.11505.
    """

    if rank is not None and (int(rank) != rank or rank < 1):
        raise ValueError(f"rank: must be a positive integer or None, got {rank!r}")
    if split not in ("sqrt", "left", "right"):
        raise ValueError(f"split: must be 'sqrt', 'left' or 'right', got {split!r}")

    def core(clients, weights, state):
        def one_layer(f: LoRAFactors, _):
            r = f.b.shape[-1]
            r_bc = r if rank is None else int(rank)
            if r_bc > r:
                raise ValueError(f"rank: must be in [1, {r}] (the clients' rank), got {rank}")
            u, s, vt = sp_svd(f.b, f.a, weights)
            out = split_svd(u, s, vt, r_bc, r, split)
            tail = jnp.sum(s[r_bc:] ** 2)
            return LayerResult(factors=out, diag={"sp_tail": tail})

        broadcast, diag = aggregate_layers(clients, weights, one_layer)
        return broadcast, state, diag

    def layer_sum(f: LoRAFactors, weights):
        return jnp.einsum("c,cdr,crk->dk", weights.astype(f.b.dtype), f.b, f.a)  # (d, k)

    def layer_finish(zbar, one: LoRAFactors, _):
        r = one.b.shape[-1]
        r_bc = r if rank is None else int(rank)
        if r_bc > r:
            raise ValueError(f"rank: must be in [1, {r}] (the clients' rank), got {rank}")
        u, s, vt = svd(zbar)
        out = split_svd(u, s, vt, r_bc, r, split)
        return LayerResult(factors=out, diag={"sp_tail": jnp.sum(s[r_bc:] ** 2)})

    return make_abo(stateless_init, core, streamed=linear_streamed(layer_sum, layer_finish))
