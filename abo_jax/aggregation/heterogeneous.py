"""Heterogeneous client ranks: HetLoRA (zero padding), RBLA (masked averaging), FlexLoRA (SVD).

Every client is padded to one rank ``r_max`` (the rank of the stacked factors); client ``i`` uses
only its first ``r_i`` components (``client_ranks``, a factory argument, static), the rest are zero
(:func:`~abo_jax.lora.mask_rank`). Inputs are masked to each client's rank before aggregating and every
broadcast is zero beyond each client's rank.

Scale convention (all three operators): client ``i`` applies ``s_i = alpha / r_i`` (or ``s_i = 1``
when ``alpha is None``, the setting of the papers' comparisons). The operators aggregate the
*effective* factors ``(s_i B_i, A_i)``, i.e. the effective products ``s_i B_i A_i``, and return
``(P_i, Q_i)`` with the scale taken back out, so that ``s_i P_i Q_i`` is the intended update of
client ``i`` (for FlexLoRA the rank-``r_i`` truncation of ``sum_i p_i s_i B_i A_i``).

References:
  Cho et al. (HetLoRA), arXiv:2401.06432; Chen et al. (RBLA), arXiv:2408.08699; Bai et al.
  (FlexLoRA), arXiv:2402.11505.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.aggregation._base import (
    ABO,
    LayerResult,
    Traits,
    aggregate_layers,
    check_alpha,
    client_scales,
    layer_client_ranks,
    make_abo,
    stateless_init,
    validate_client_ranks,
)
from abo_jax.aggregation.sum_product import svd_from_stacked
from abo_jax.linalg import svd
from abo_jax.lora import LoRAFactors, mask_rank, rank_mask

__all__ = ["hetlora", "rbla", "flexlora"]


def _rank_bytes(ranks: np.ndarray, d: int, k: int, itemsize: int) -> jax.Array:
    """``(m,)`` bytes of client ``i``'s live factors: ``r_i (d + k)`` values."""
    return jnp.asarray(ranks * (d + k) * itemsize, jnp.result_type(float))


def _truncate_to_clients(p: jax.Array, q: jax.Array, ranks, scales) -> LoRAFactors:
    """Global effective ``(P (d, R), Q (R, k))`` to per-client factors with ``s_i`` taken out of B."""
    m = ranks.shape[0]
    out = mask_rank(
        LoRAFactors(b=jnp.broadcast_to(p, (m, *p.shape)), a=jnp.broadcast_to(q, (m, *q.shape))),
        jnp.asarray(ranks),
    )
    inv = jnp.asarray(1.0 / scales, p.dtype).reshape(m, 1, 1)
    return LoRAFactors(b=out.b * inv, a=out.a)


def _hetero_abo(client_ranks: Any, alpha: float | None, layer_fn: Callable) -> ABO:
    ranks_tree = validate_client_ranks(client_ranks)
    alpha = check_alpha(alpha)

    def core(clients, weights, state):
        per_layer = layer_client_ranks(ranks_tree, clients)

        def one_layer(f: LoRAFactors, layer):
            ranks = per_layer[layer]
            scales = client_scales(ranks, alpha)
            f = mask_rank(f, jnp.asarray(ranks))
            return layer_fn(f, weights, ranks, scales)

        # One start per client: each is truncated to that client's own rank.
        broadcast, diag = aggregate_layers(clients, weights, one_layer, per_client=True)
        return broadcast, state, diag

    if isinstance(ranks_tree, np.ndarray):  # one (m,) array for every layer: one scale per client
        scale = None if alpha is None else client_scales(ranks_tree, alpha)
        traits = Traits(client_ranks=ranks_tree, lora_scale=1.0 if scale is None else scale)
    else:  # per-layer ranks: per-layer scales, which a per-client scale cannot state
        traits = Traits(client_ranks=ranks_tree, lora_scale=1.0 if alpha is None else None)
    return make_abo(stateless_init, core, traits=traits)


def _effective_b(f: LoRAFactors, scales: np.ndarray) -> jax.Array:
    return f.b * jnp.asarray(scales, f.b.dtype).reshape(-1, 1, 1)


def hetlora(client_ranks: Any, alpha: float | None = None) -> ABO:
    r"""HetLoRA aggregation: zero-pad every client to ``r_max``, average, truncate per client.

    .. math::
        \bar B = \sum_i p_i\, s_i \operatorname{pad}(B_i),\quad
        \bar A = \sum_i p_i \operatorname{pad}(A_i),\qquad
        P_i = \bar B_{:, :r_i} / s_i,\quad Q_i = \bar A_{:r_i, :} .

    A component ``j`` is diluted by the clients that lack it (their zero padding counts with their
    weight); compare :func:`rbla`. With equal ranks this is PS. HetLoRA's rank self-pruning and
    sparsity-weighted aggregation are client-side and weighting choices: pass them through
    ``client_ranks`` and ``weights``.

    Args:
      client_ranks: ``(m,)`` integer ranks ``1 <= r_i <= min(r_max, d, k)``, or a pytree mirroring
        the client tree with one ``(m,)`` array per LoRA layer.
      alpha: ``None`` (every client scale 1) or the LoRA alpha (``s_i = alpha / r_i``); see the
        module docstring for the convention.

    Returns:
      An :class:`ABO` (stateless). Bytes per client ``i``: up and down ``r_i (d + k)`` values per
      layer.

    Example:
      >>> b = jnp.ones((2, 4, 2)); a = jnp.ones((2, 2, 3))
      >>> bc, _, _ = hetlora([1, 2]).aggregate({"w": LoRAFactors(b, a)}, jnp.array([.5, .5]))
      >>> bc.factors["w"].b[0, 0]  # client 0 keeps rank 1
      Array([1., 0.], dtype=float32)

    References:
      Cho et al. (HetLoRA), arXiv:2401.06432.
    """

    def layer_fn(f, weights, ranks, scales):
        m, d, _ = f.b.shape
        w = weights.astype(f.b.dtype)
        p = jnp.einsum("c,cdr->dr", w, _effective_b(f, scales))
        q = jnp.einsum("c,crk->rk", w, f.a)
        nbytes = _rank_bytes(ranks, d, f.a.shape[-1], f.b.dtype.itemsize)
        return LayerResult(
            factors=_truncate_to_clients(p, q, ranks, scales), bytes_up=nbytes, bytes_down=nbytes
        )

    return _hetero_abo(client_ranks, alpha, layer_fn)


def rbla(client_ranks: Any, alpha: float | None = None) -> ABO:
    r"""RBLA (rank-based LoRA aggregation): average each rank component over the clients that have it.

    .. math::
        \bar B_{:, j} = \frac{\sum_{i: r_i > j} p_i\, s_i B_{i,:,j}}{\sum_{i: r_i > j} p_i},\quad
        \bar A_{j, :} = \frac{\sum_{i: r_i > j} p_i A_{i,j,:}}{\sum_{i: r_i > j} p_i},\qquad
        P_i = \bar B_{:, :r_i} / s_i,\quad Q_i = \bar A_{:r_i, :} .

    Weights are renormalized per component, so low-rank clients do not dilute the components they
    lack (compare :func:`hetlora`). A component that no participating client holds is broadcast as
    zero. With equal ranks this is PS.

    Args:
      client_ranks: ``(m,)`` integer ranks, or a pytree of them per LoRA layer (see :func:`hetlora`).
      alpha: ``None`` (scale 1) or the LoRA alpha (``s_i = alpha / r_i``).

    Returns:
      An :class:`ABO` (stateless). Diagnostics: ``coverage`` ``(L, r_max)``, the total weight of the
      clients holding each component. Bytes per client ``i``: ``r_i (d + k)`` values per layer each
      way.

    References:
      Chen et al. (RBLA), arXiv:2408.08699.
    """

    def layer_fn(f, weights, ranks, scales):
        m, d, r_max = f.b.shape
        held = weights.astype(f.b.dtype)[:, None] * rank_mask(jnp.asarray(ranks), r_max).astype(
            f.b.dtype
        )  # (m, r_max)
        coverage = jnp.sum(held, axis=0)  # (r_max,)
        safe = jnp.where(coverage > 0, coverage, jnp.ones_like(coverage))
        per_component = jnp.where(coverage[None] > 0, held / safe[None], jnp.zeros_like(held))
        p = jnp.einsum("cj,cdj->dj", per_component, _effective_b(f, scales))
        q = jnp.einsum("cj,cjk->jk", per_component, f.a)
        nbytes = _rank_bytes(ranks, d, f.a.shape[-1], f.b.dtype.itemsize)
        return LayerResult(
            factors=_truncate_to_clients(p, q, ranks, scales),
            diag={"coverage": coverage},
            bytes_up=nbytes,
            bytes_down=nbytes,
        )

    return _hetero_abo(client_ranks, alpha, layer_fn)


def flexlora(client_ranks: Any, alpha: float | None = None) -> ABO:
    r"""FlexLoRA: SP with per-client truncation ranks.

    .. math::
        \bar Z = \sum_i p_i\, s_i B_i A_i = U S V^\top,\qquad
        P_i = U_{r_i} (S_{r_i}/s_i)^{1/2},\quad Q_i = (S_{r_i}/s_i)^{1/2} V_{r_i}^\top,

    so ``s_i P_i Q_i = SVD_{r_i}(\bar Z)``. When ``sum_i r_i < min(d, k)`` the SVD comes from the
    stacked live components (QR of ``[p_i s_i B_i[:, :r_i]]_i`` and ``[A_i[:r_i]]_i^T``, SVD of the
    small core) and the ``d x k`` matrix is never formed; otherwise from the dense ``\bar Z``.

    Args:
      client_ranks: ``(m,)`` integer ranks, or a pytree of them per LoRA layer (see :func:`hetlora`).
      alpha: ``None`` (scale 1) or the LoRA alpha (``s_i = alpha / r_i``).

    Returns:
      An :class:`ABO` (stateless). Diagnostics: ``sp_tail`` ``(L, m)``, the energy
      ``sum_{j > r_i} s_j(\bar Z)^2`` each client's truncation discards. Bytes per client ``i``:
      ``r_i (d + k)`` values per layer each way.

    References:
      Bai et al. (FlexLoRA), arXiv:2402.11505; Chen et al., arXiv:2508.01348 (SP).
    """

    def layer_fn(f, weights, ranks, scales):
        m, d, r_max = f.b.shape
        k = f.a.shape[-1]
        w_eff = weights.astype(f.b.dtype) * jnp.asarray(scales, f.b.dtype)
        n = int(ranks.sum())
        if n < min(d, k):
            # Static gather of the live components only: (client, component) pairs.
            rows = np.repeat(np.arange(m), ranks)
            cols = np.concatenate([np.arange(r) for r in ranks])
            bs = (w_eff[rows][:, None] * f.b[rows, :, cols]).T  # (d, n)
            u, s, vt = svd_from_stacked(bs, f.a[rows, cols, :])
        else:
            zbar = jnp.einsum("c,cdr,crk->dk", w_eff, f.b, f.a)
            u, s, vt = svd(zbar)
        q_len = s.shape[0]
        if q_len < r_max:
            u = jnp.pad(u, ((0, 0), (0, r_max - q_len)))
            vt = jnp.pad(vt, ((0, r_max - q_len), (0, 0)))
            s = jnp.pad(s, (0, r_max - q_len))
        kept = rank_mask(jnp.asarray(ranks), s.shape[0]).astype(s.dtype)  # (m, q)
        tail = jnp.sum((1.0 - kept) * (s**2)[None], axis=1)  # (m,)
        root = jnp.sqrt(s[:r_max])
        # Split sqrt(s_j / s_i) onto both factors: s_i P_i Q_i = U_{r_i} S_{r_i} V_{r_i}^T.
        inv_root = jnp.asarray(1.0 / np.sqrt(scales), f.b.dtype).reshape(m, 1, 1)
        p = (u[:, :r_max] * root[None])[None] * inv_root
        q = (root[:, None] * vt[:r_max])[None] * inv_root
        out = mask_rank(LoRAFactors(b=p, a=q), jnp.asarray(ranks))
        nbytes = _rank_bytes(ranks, d, k, f.b.dtype.itemsize)
        return LayerResult(factors=out, diag={"sp_tail": tail}, bytes_up=nbytes, bytes_down=nbytes)

    return _hetero_abo(client_ranks, alpha, layer_fn)
