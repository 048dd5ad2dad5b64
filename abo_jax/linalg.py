"""QR and SVD that stay safe under ``jax.vmap`` on the CPU backend.

jaxlib's CPU LAPACK kernels (``jnp.linalg.qr``, ``jnp.linalg.svd``) split a *batched* call over
the runtime's intra-op thread pool and block a pool thread until the pieces finish. When XLA runs
two such calls at once (independent layers of one round, each batched over a vmapped axis of runs
or seeds) every pool thread of a small machine can end up blocked waiting for work that no free
thread is left to run: the process hangs with all threads idle. This was seen with jax 0.9.2 and
0.10.x on a 2-core machine (gdb: ``SingularValueDecomposition::Kernel`` -> ``BlockUntilReady`` on
both ``tf_XLAEigen`` threads), e.g. the simulator with ``num_runs`` and SP as the operator.

:func:`qr` and :func:`svd` are ``jnp.linalg.qr``/``svd`` for one matrix. Under ``jax.vmap`` on the
CPU backend they run the batch as a ``lax.map`` of unbatched calls (which LAPACK does inline, on
the calling thread) instead of one batched call; on other backends they batch as usual. The
numbers are those of the unbatched calls, so results do not depend on whether a caller vmaps.
The aggregation operators and :mod:`theory` use these for every QR and SVD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import custom_batching

__all__ = ["qr", "svd"]


def _sequential_on_cpu(fn, jvp):
    """``fn`` for one matrix, mapped (not batched) over a vmapped axis on the CPU backend.

    ``jvp(x, dx, out)`` gives the tangents from the primal output with matrix products only, so
    derivatives (``jax.grad`` through an operator, as :mod:`theory.certify` takes) never reach a
    batched LAPACK call either (``custom_vmap`` alone has no reverse mode).
    """
    mapped = custom_batching.custom_vmap(fn)

    @mapped.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size, in_batched  # one argument, batched whenever this rule runs
        if jax.default_backend() == "cpu":
            out = jax.lax.map(mapped, x)
        else:
            out = jax.vmap(fn)(x)
        return out, jax.tree.map(lambda _: True, out)

    wrapped = jax.custom_jvp(mapped)

    @wrapped.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        out = wrapped(x)
        return out, jvp(x, dx, out)

    return wrapped


def _t(x):
    return jnp.swapaxes(x, -1, -2)


def _qr_jvp(x, dx, out):
    # Reduced QR x = Q R (n >= p, R invertible): with C = Q^T dx R^{-1}, the skew part
    # W = L - L^T of C's strict lower triangle L gives dQ = Q (W - C) + dx R^{-1}, dR = (C - W) R.
    q, r = out
    if x.shape[-2] < x.shape[-1]:
        raise NotImplementedError("qr: derivatives need a tall or square matrix (n >= p)")
    dx_rinv = _t(jax.scipy.linalg.solve_triangular(r, _t(dx), trans="T", lower=False))
    c = _t(q) @ dx_rinv
    low = jnp.tril(c, -1)
    w = low - _t(low)
    return q @ (w - c) + dx_rinv, (c - w) @ r


def _svd_jvp(x, dx, out, compute_uv=True):
    # Thin real SVD x = U diag(s) V^T with distinct non-zero s (Townsend, "Differentiating the
    # singular value decomposition", 2016): P = U^T dx V, ds = diag(P),
    # F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal), dU = U (F o (P S + S P^T)) + (I - U U^T) dx V S^-1,
    # dV = V (F o (S P + P^T S)) + (I - V V^T) dx^T U S^-1.
    u, s, vt = out
    v = _t(vt)
    p = _t(u) @ dx @ v
    ds = jnp.diagonal(p)
    if not compute_uv:
        return ds
    row = s[None, :]
    eye = jnp.eye(s.shape[0], dtype=s.dtype)
    diff = (row + _t(row)) * (row - _t(row))  # s_j^2 - s_i^2
    f = 1.0 / (diff + eye) - eye
    ps, sp = p * row, _t(row) * p  # P S, S P
    du = u @ (f * (ps + _t(ps)))
    dv = v @ (f * (sp + _t(sp)))
    n, k = x.shape[-2:]
    if n > k:
        dxv = dx @ v
        du = du + (dxv - u @ (_t(u) @ dxv)) / row
    if k > n:
        dxu = _t(dx) @ u
        dv = dv + (dxu - v @ (vt @ dxu)) / row
    return du, ds, _t(dv)


def _svd_values_jvp(x, dx, s):
    u, s_again, vt = _svd(x)
    return _svd_jvp(x, dx, (u, s_again, vt), compute_uv=False)


_qr = _sequential_on_cpu(lambda x: tuple(jnp.linalg.qr(x)), _qr_jvp)
_svd = _sequential_on_cpu(lambda x: tuple(jnp.linalg.svd(x, full_matrices=False)), _svd_jvp)
_svdvals = _sequential_on_cpu(lambda x: jnp.linalg.svd(x, compute_uv=False), _svd_values_jvp)


def qr(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of one matrix ``x (n, p)``: ``q (n, min(n, p))``, ``r (min(n, p), p)``.

    Raises:
      ValueError: ``x`` is not a matrix (vmap it for a batch).
    """
    if jnp.ndim(x) != 2:
        raise ValueError(f"qr: expected one matrix (n, p), got shape {jnp.shape(x)}; vmap it")
    return _qr(x)


def svd(x: jax.Array, compute_uv: bool = True):
    """Thin SVD of one matrix ``x (n, p)``: ``u (n, q)``, ``s (q,)`` descending, ``vt (q, p)`` with
    ``q = min(n, p)``; only ``s`` when ``compute_uv=False``.

    Raises:
      ValueError: ``x`` is not a matrix (vmap it for a batch).
    """
    if jnp.ndim(x) != 2:
        raise ValueError(f"svd: expected one matrix (n, p), got shape {jnp.shape(x)}; vmap it")
    return _svd(x) if compute_uv else _svdvals(x)
