"""Closed forms in NumPy (float64) for the aggregation tests, and random client draws.

Everything here is written independently of abo_jax: plain NumPy, dense matrices, explicit loops.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from abo_jax import LoRAFactors

# (m, d, k, r): d != k, m = 1, r = min(d, k), square layers, and m r < min(d, k) (stacked SP path).
SHAPES = [
    (1, 6, 4, 2),
    (3, 7, 5, 2),
    (4, 5, 5, 3),
    (3, 6, 4, 4),
    (2, 9, 8, 3),
]


def draw_clients(rng: np.random.Generator, m: int, d: int, k: int, r: int):
    """Random float64 factors ``b (m, d, r)``, ``a (m, r, k)``."""
    b = rng.normal(size=(m, d, r))
    a = rng.normal(size=(m, r, k))
    return b, a


def draw_weights(rng: np.random.Generator, m: int, *, zero: bool = False) -> np.ndarray:
    """Positive weights summing to 1; with ``zero`` (and m > 1) the first client gets weight 0."""
    w = rng.uniform(0.2, 1.0, size=m)
    if zero and m > 1:
        w[0] = 0.0
    return w / w.sum()


def as_tree(b, a, **extra):
    """A one-layer client tree as jax arrays (plus optional dense leaves)."""
    return {"layer": LoRAFactors(b=jnp.asarray(b), a=jnp.asarray(a)), **extra}


def zbar(b, a, p):
    """``sum_i p_i B_i A_i``, explicitly."""
    return sum(p[i] * b[i] @ a[i] for i in range(len(p)))


def svd_truncate(z, rank):
    """The best rank-``rank`` approximation of ``z`` (dense NumPy SVD) and the discarded energy."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank], float(np.sum(s[rank:] ** 2))


def ps(b, a, p):
    """``(sum p_i B_i, sum p_i A_i)``."""
    return np.einsum("c,cdr->dr", p, b), np.einsum("c,crk->rk", p, a)


def weak_mismatch(pq, b, a, p):
    """``R_w = sum_i p_i ||P Q - B_i A_i||_F^2``."""
    return sum(p[i] * np.sum((pq - b[i] @ a[i]) ** 2) for i in range(len(p)))


def strong_mismatch(x, xs, p):
    """``sum_i p_i ||X - X_i||_F^2``."""
    return sum(p[i] * np.sum((x - xs[i]) ** 2) for i in range(len(p)))


def pad_rank(b, a, ranks):
    """Zero every component ``j >= r_i`` of client ``i`` (explicit loop)."""
    b, a = b.copy(), a.copy()
    for i, r in enumerate(ranks):
        b[i, :, r:] = 0.0
        a[i, r:, :] = 0.0
    return b, a


def starts(factors, m: int):
    """A global operator's broadcast (one copy, no client axis) as every client's start ``(m, ...)``.

    Asserts the one-copy form, so a test that uses it also checks what the operator declares.
    """
    if isinstance(factors, LoRAFactors):
        b, a = np.asarray(factors.b), np.asarray(factors.a)
        assert b.ndim == 2 and a.ndim == 2, f"not one copy: b {b.shape}, a {a.shape}"
        return LoRAFactors(np.broadcast_to(b, (m, *b.shape)), np.broadcast_to(a, (m, *a.shape)))
    x = np.asarray(factors)
    return np.broadcast_to(x, (m, *x.shape))


def products(factors: LoRAFactors, scales=None, *, m: int | None = None) -> np.ndarray:
    """``(m, d, k)`` products ``s_i P_i Q_i`` of a broadcast (NumPy).

    A one-copy broadcast (a global operator's, ``b (d, r)``) needs ``m``: the clients it reaches.
    """
    if np.ndim(factors.b) == 2:
        if m is None:
            raise ValueError("products: a one-copy broadcast needs m (the number of clients)")
        factors = starts(factors, m)
    b, a = np.asarray(factors.b), np.asarray(factors.a)
    out = np.stack([b[i] @ a[i] for i in range(b.shape[0])])
    if scales is not None:
        out = out * np.asarray(scales)[:, None, None]
    return out


def het_ranks(m: int, r: int) -> np.ndarray:
    """Heterogeneous ranks ``1..r`` cycling over the clients (the last client has rank ``r``)."""
    ranks = 1 + (np.arange(m) % r)
    ranks[-1] = r
    return ranks


def operator_zoo(m: int, r: int):
    """Every operator of the package, as ``name -> (abo, shares_a)`` for ``m`` clients of rank ``r``.

    ``shares_a``: the operator needs all clients to hold the same ``A`` (FFA-LoRA, RoLoRA's first
    round), so test inputs must be drawn that way.
    """
    import abo_jax as aj

    ranks = het_ranks(m, r)
    return {
        "sum_product": (aj.sum_product(), False),
        "product_sum": (aj.product_sum(), False),
        "fedex": (aj.fedex(scale=0.5), False),
        "flora": (aj.flora(scale=2.0), False),
        "ffa": (aj.ffa(), True),
        "rolora": (aj.rolora(), True),
        "fedsa": (aj.fedsa(), False),
        "hetlora": (aj.hetlora(ranks, alpha=4.0), False),
        "rbla": (aj.rbla(ranks), False),
        "flexlora": (aj.flexlora(ranks, alpha=2.0), False),
    }


def jitted(abo):
    """``jax.jit(abo.aggregate)``: one compile per test case is faster than eager dispatch.

    Concrete-input validation is skipped under jit; it is tested eagerly in test_validation.py.
    """
    import jax

    return jax.jit(abo.aggregate)


@__import__("functools").lru_cache(maxsize=None)
def cached(factory, *args, **kwargs):
    """``jitted(factory(*args, **kwargs))``, shared across tests (jit then reuses compiled shapes).

    Only for hashable (non-array) factory arguments.
    """
    return jitted(factory(*args, **kwargs))
