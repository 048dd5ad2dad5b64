"""An SVD that cannot hang the CPU runtime, with its own derivative.

jaxlib's CPU SVD kernel (behind ``jnp.linalg.svd``) hands the LAPACK call to the runtime's intra-op
thread pool and blocks the calling thread, itself a pool thread, until it finishes. When XLA runs
as many SVDs at once as the pool has threads (independent layers of one round; the pool has one
thread per core, two on a 2-core machine), every pool thread waits for work that no free thread
is left to run, and the process hangs with all threads idle. This was seen with jax 0.9.2 and
0.10.x on a 2-core machine (gdb: ``SingularValueDecomposition::Kernel`` -> ``BlockUntilReady`` on
both ``tf_XLAEigen`` threads), batched or not: the simulator with seeds on its run axis and SP as
the operator, the operator zoo. Among jaxlib's CPU LAPACK kernels only the SVD schedules on the
pool (QR, eigh and the solvers run inline).

:func:`svd` computes the same thin SVD; on the CPU backend the LAPACK call runs in numpy on the
calling thread (a vmapped call passes the whole stack to numpy), elsewhere it is
``jnp.linalg.svd``. The host call is a ``jax.experimental.buffer_callback``: numpy reads XLA's
operand buffer and writes the results into XLA's output buffers in place. ``jax.pure_callback``
is not safe here: it first ``device_put``s its operands on a CPU device, and over a mesh of
several CPU devices that copy can wait behind the device's own blocked execution (the paper
experiment's digits cell hung on a 2-device mesh in the callback's first ``np.asarray``, while
the other device waited at the round's all-reduce; small operands copy inline, so small runs
passed). Its derivative is a ``custom_jvp`` written with matrix products only, so ``jax.grad``
through an operator (as :mod:`theory.certify` takes) works too. The aggregation operators and
:mod:`theory` use it for every SVD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

__all__ = ["svd", "qr", "HALF_DTYPES"]

#: floating dtypes LAPACK has no kernels for: factorized in float32 and cast back
HALF_DTYPES = (jnp.float16, jnp.bfloat16)


def _is_half(dtype) -> bool:
    return any(jnp.dtype(dtype) == jnp.dtype(h) for h in HALF_DTYPES)


def _host_svd(x: np.ndarray):
    """numpy's thin SVD of a stack ``(..., n, p)``; NaNs (never an error, never a hang) where a
    matrix is not finite or LAPACK fails.

    Finiteness is checked before LAPACK is called: on a matrix holding an ``inf``, LAPACK's SVD
    has been seen to iterate without end (SP's dense path on ``(6, 5)``, inside ``jit``), so a
    non-finite matrix never reaches it.
    """
    x = np.asarray(x)
    n, p = x.shape[-2:]
    q = min(n, p)
    u = np.full(x.shape[:-2] + (n, q), np.nan, x.dtype)
    s = np.full(x.shape[:-2] + (q,), np.nan, x.dtype)
    vt = np.full(x.shape[:-2] + (q, p), np.nan, x.dtype)
    ok = np.all(np.isfinite(x), axis=(-2, -1))  # one flag per matrix of the stack
    if np.all(ok):
        try:
            return tuple(np.asarray(a, x.dtype) for a in np.linalg.svd(x, full_matrices=False))
        except np.linalg.LinAlgError:  # no convergence: fall back to matrix by matrix
            pass
    for index in np.ndindex(ok.shape):
        if not ok[index]:
            continue
        try:
            u[index], s[index], vt[index] = np.linalg.svd(x[index], full_matrices=False)
        except np.linalg.LinAlgError:  # leave this matrix's NaNs, as jnp.linalg.svd gives
            pass
    return u, s, vt


def _svd_into(ctx, out, x):
    """``buffer_callback`` body: the SVD of XLA's operand ``x``, written into the ``out`` buffers."""
    del ctx
    for buffer, value in zip(out, _host_svd(np.asarray(x)), strict=True):
        np.asarray(buffer)[...] = value


def _t(x):
    return jnp.swapaxes(x, -1, -2)


def _svd_tangents(x, dx, u, s, vt):
    # Thin real SVD x = U diag(s) V^T with distinct non-zero s (Townsend, "Differentiating the
    # singular value decomposition", 2016): P = U^T dx V, ds = diag(P),
    # F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal),
    # dU = U (F o (P S + S P^T)) + (I - U U^T) dx V S^-1,
    # dV = V (F o (S P + P^T S)) + (I - V V^T) dx^T U S^-1.
    v = _t(vt)
    p = _t(u) @ dx @ v
    ds = jnp.diagonal(p)
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


@jax.custom_jvp
def _svd(x):
    if jax.default_backend() != "cpu":
        return tuple(jnp.linalg.svd(x, full_matrices=False))
    n, p = x.shape[-2:]
    q = min(n, p)
    spec = lambda *shape: jax.ShapeDtypeStruct(x.shape[:-2] + shape, x.dtype)
    shapes = (spec(n, q), spec(q), spec(q, p))
    return tuple(buffer_callback(_svd_into, shapes, vmap_method="expand_dims")(x))


@_svd.defjvp
def _svd_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    u, s, vt = _svd(x)
    return (u, s, vt), _svd_tangents(x, dx, u, s, vt)


def _check_matrix(x, name: str) -> None:
    if jnp.ndim(x) != 2:
        raise ValueError(f"{name}: expected one matrix (n, p), got shape {jnp.shape(x)}; vmap it")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{name}: expected a floating-point matrix, got dtype {jnp.result_type(x)}; "
            "cast it first (e.g. x.astype(jnp.float32))"
        )


def svd(x: jax.Array, compute_uv: bool = True):
    """Thin SVD of one matrix ``x (n, p)`` (vmap it for a batch), as ``jnp.linalg.svd``.

    float16 and bfloat16 (no LAPACK kernels) are factorized in float32 and the results cast back.

    Returns:
      ``u (n, q)``, ``s (q,)`` descending, ``vt (q, p)`` with ``q = min(n, p)`` and
      ``x = u diag(s) vt``; only ``s`` when ``compute_uv=False``. Non-finite input (``nan`` or
      ``inf``) gives NaNs at once: it never reaches LAPACK, which can loop forever on an ``inf``.

    Raises:
      ValueError: ``x`` is not a floating-point matrix.
    """
    _check_matrix(x, "svd")
    dtype = jnp.result_type(x)
    if _is_half(dtype):
        u, s, vt = (y.astype(dtype) for y in _svd(jnp.asarray(x, jnp.float32)))
    else:
        u, s, vt = _svd(x)
    return (u, s, vt) if compute_uv else s


def qr(x: jax.Array):
    """Reduced QR of one matrix ``x (n, p)``, as ``jnp.linalg.qr`` (float16/bfloat16 in float32).

    Returns:
      ``q (n, min(n, p))`` with orthonormal columns and upper-triangular ``r (min(n, p), p)``.
      Non-finite input gives non-finite output (LAPACK's QR terminates on it).

    Raises:
      ValueError: ``x`` is not a floating-point matrix.
    """
    _check_matrix(x, "qr")
    dtype = jnp.result_type(x)
    if _is_half(dtype):
        q, r = jnp.linalg.qr(jnp.asarray(x, jnp.float32))
        return q.astype(dtype), r.astype(dtype)
    q, r = jnp.linalg.qr(x)
    return q, r
