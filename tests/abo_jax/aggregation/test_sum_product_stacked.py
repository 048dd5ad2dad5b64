"""SP from stacked factors: equal to the dense SVD truncation, and provably never forms ``d x k``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import as_tree, draw_clients, draw_weights, svd_truncate, zbar

import abo_jax as aj

D, K = 13, 11  # distinct from every other dimension used below


def _intermediate_shapes(jaxpr):
    """Shapes of every equation output, recursing into sub-jaxprs (pjit, custom_jvp, while, ...)."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            items = param if isinstance(param, (tuple, list)) else [param]
            for item in items:
                inner = getattr(item, "jaxpr", item)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    shapes += _intermediate_shapes(inner)
    return shapes


def _has_dense(fn, *args):
    closed = jax.make_jaxpr(fn)(*args)
    return any(
        s[-2:] in ((D, K), (K, D)) for s in _intermediate_shapes(closed.jaxpr) if len(s) >= 2
    )


def _sp(b, a, w):
    f = aj.sum_product().aggregate({"l": aj.LoRAFactors(b, a)}, w)[0].factors["l"]
    assert f.b.ndim == 2  # a global operator: one copy
    return f


@pytest.mark.parametrize("m,r,zero", [(1, 3, False), (3, 2, False), (3, 3, True), (2, 5, True)])
def test_stacked_path_matches_dense_svd_and_never_forms_dk(m, r, zero):
    assert m * r < min(D, K)
    rng = np.random.default_rng(m * 10 + r)
    b, a = draw_clients(rng, m, D, K, r)
    p = draw_weights(rng, m, zero=zero)
    f = _sp(jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))
    expected, _ = svd_truncate(zbar(b, a, p), r)
    np.testing.assert_allclose(f.b @ f.a, expected, rtol=1e-10, atol=1e-12)
    # The stacked SVD's singular values are Zbar's.
    _, s, _ = aj.aggregation.stacked_svd(jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))
    s_dense = np.linalg.svd(zbar(b, a, p), compute_uv=False)[: m * r]
    np.testing.assert_allclose(s, s_dense, rtol=1e-10, atol=1e-12 * s_dense[0])
    assert not _has_dense(_sp, jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))


def test_jaxpr_check_finds_the_dense_product():
    """The check above can fail: on the dense path (m r >= min(d, k)) it sees the d x k matrix."""
    m, r = 6, 2
    rng = np.random.default_rng(0)
    b, a = draw_clients(rng, m, D, K, r)
    p = draw_weights(rng, m)
    assert _has_dense(_sp, jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))
    # ... and the dense path is right too.
    f = _sp(jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))
    np.testing.assert_allclose(f.b @ f.a, svd_truncate(zbar(b, a, p), r)[0], rtol=1e-10)


def test_flexlora_stacked_path_never_forms_dk():
    ranks = np.array([1, 3, 2])
    rng = np.random.default_rng(1)
    b, a = draw_clients(rng, 3, D, K, 3)
    p = draw_weights(rng, 3)

    def flex(b, a, w):
        return aj.flexlora(ranks, alpha=3.0).aggregate({"l": aj.LoRAFactors(b, a)}, w)[0]

    assert not _has_dense(flex, jnp.asarray(b), jnp.asarray(a), jnp.asarray(p))
    assert _has_dense(
        lambda b, a, w: aj.flexlora(np.array([4, 4, 4])).aggregate({"l": aj.LoRAFactors(b, a)}, w)[
            0
        ],
        jnp.asarray(np.pad(b, ((0, 0), (0, 0), (0, 1)))),
        jnp.asarray(np.pad(a, ((0, 0), (0, 1), (0, 0)))),
        jnp.asarray(p),
    )


def test_split_options_give_the_same_product():
    rng = np.random.default_rng(2)
    b, a = draw_clients(rng, 2, 7, 6, 2)
    p = draw_weights(rng, 2)
    prods = []
    for split in ("sqrt", "left", "right"):
        f = aj.sum_product(split=split).aggregate(as_tree(b, a), jnp.asarray(p))[0].factors["layer"]
        prods.append(np.asarray(f.b @ f.a))
    np.testing.assert_allclose(prods[1], prods[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(prods[2], prods[0], rtol=1e-10, atol=1e-12)
    f = aj.sum_product(split="left").aggregate(as_tree(b, a), jnp.asarray(p))[0].factors["layer"]
    np.testing.assert_allclose(f.a @ f.a.T, np.eye(2), atol=1e-12)  # V^T rows orthonormal
