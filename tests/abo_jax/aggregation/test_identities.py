"""DESIGN.md theory identities 1, 2, 4, 5 and 8 as plain float64 tests on the operators' outputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from abo_reference import (
    as_tree,
    cached,
    draw_clients,
    draw_weights,
    ps,
    strong_mismatch,
    weak_mismatch,
    zbar,
)

import abo_jax as aj

SEEDS_SHAPES = [(0, (3, 7, 5, 2)), (1, (4, 5, 5, 3)), (2, (2, 9, 6, 2))]


def _draw(seed, shape, zero=True):
    rng = np.random.default_rng(seed)
    m, d, k, r = shape
    b, a = draw_clients(rng, m, d, k, r)
    return rng, b, a, draw_weights(rng, m, zero=zero)


def _sp_ps(b, a, p, rank=None):
    tree, w = as_tree(b, a), jnp.asarray(p)
    bc_sp, _, diag = cached(aj.sum_product, rank=rank)(tree, w)
    bc_ps, _, _ = cached(aj.product_sum)(tree, w)
    sp, ps_ = bc_sp.factors["layer"], bc_ps.factors["layer"]  # global: one copy each
    assert sp.b.ndim == ps_.b.ndim == 2
    return (
        (np.asarray(sp.b), np.asarray(sp.a)),
        (np.asarray(ps_.b), np.asarray(ps_.a)),
        diag,
    )


@pytest.mark.parametrize("seed,shape", SEEDS_SHAPES)
def test_identity_1_weak_mismatch_decomposes(seed, shape):
    rng, b, a, p = _draw(seed, shape)
    z = zbar(b, a, p)
    rw_star = weak_mismatch(z, b, a, p)
    (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(b, a, p)
    d, k, r = shape[1], shape[2], shape[3]
    candidates = [sp_b @ sp_a, ps_b @ ps_a, rng.normal(size=(d, r)) @ rng.normal(size=(r, k))]
    for pq in candidates:
        np.testing.assert_allclose(
            weak_mismatch(pq, b, a, p), rw_star + np.sum((pq - z) ** 2), rtol=1e-10
        )


@pytest.mark.parametrize("seed,shape", SEEDS_SHAPES)
def test_identity_2_sp_error_is_the_svd_tail(seed, shape):
    _, b, a, p = _draw(seed, shape)
    z = zbar(b, a, p)
    s = np.linalg.svd(z, compute_uv=False)
    floor = 1e-12 * np.sum(s**2)  # absolute floor, relative to ||Zbar||^2 (the tail may be 0)
    for rank in sorted({1, shape[3]}):
        (sp_b, sp_a), _, diag = _sp_ps(b, a, p, rank)
        tail = np.sum(s[rank:] ** 2)
        np.testing.assert_allclose(np.sum((z - sp_b @ sp_a) ** 2), tail, rtol=1e-8, atol=floor)
        np.testing.assert_allclose(diag["sp_tail"][0], tail, rtol=1e-8, atol=floor)
        np.testing.assert_allclose(
            weak_mismatch(sp_b @ sp_a, b, a, p),
            weak_mismatch(z, b, a, p) + tail,
            rtol=1e-10,
            atol=floor,
        )


@pytest.mark.parametrize("seed,shape", SEEDS_SHAPES)
def test_identity_4_ps_error_covariance_form(seed, shape):
    _, b, a, p = _draw(seed, shape)
    bbar, abar = ps(b, a, p)
    cov = sum(p[i] * (b[i] - bbar) @ (a[i] - abar) for i in range(len(p)))
    _, (ps_b, ps_a), _ = _sp_ps(b, a, p)
    np.testing.assert_allclose(zbar(b, a, p) - ps_b @ ps_a, cov, rtol=1e-9, atol=1e-12)
    bc, _, _ = cached(aj.fedex)(as_tree(b, a), jnp.asarray(p))
    np.testing.assert_allclose(bc.base_delta["layer"], cov, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed,shape", SEEDS_SHAPES)
def test_identity_5_strong_mismatch_decomposes_and_ps_minimizes_it(seed, shape):
    rng, b, a, p = _draw(seed, shape)
    bbar, abar = ps(b, a, p)
    rb_star, ra_star = strong_mismatch(bbar, b, p), strong_mismatch(abar, a, p)
    (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(b, a, p)
    for pb in (sp_b, ps_b, rng.normal(size=bbar.shape)):
        np.testing.assert_allclose(
            strong_mismatch(pb, b, p), rb_star + np.sum((pb - bbar) ** 2), rtol=1e-10
        )
    for qa in (sp_a, ps_a, rng.normal(size=abar.shape)):
        np.testing.assert_allclose(
            strong_mismatch(qa, a, p), ra_star + np.sum((qa - abar) ** 2), rtol=1e-10
        )
    np.testing.assert_allclose(strong_mismatch(ps_b, b, p), rb_star, rtol=1e-12)
    assert strong_mismatch(sp_b, b, p) >= rb_star and strong_mismatch(sp_a, a, p) >= ra_star


def test_identity_8_exactness_cases():
    rng = np.random.default_rng(8)
    m, d, k, r = 3, 6, 5, 2
    b, a = draw_clients(rng, m, d, k, r)
    p = draw_weights(rng, m)
    # One client: PS and SP are exact.
    (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(b[:1], a[:1], np.ones(1))
    np.testing.assert_allclose(ps_b @ ps_a, b[0] @ a[0], rtol=1e-10)
    np.testing.assert_allclose(sp_b @ sp_a, b[0] @ a[0], rtol=1e-10, atol=1e-12)
    # All A equal, or all B equal: PS is exact; rank(Zbar) <= r: SP is exact.
    for bb, aa in ((b, np.broadcast_to(a[0], a.shape)), (np.broadcast_to(b[0], b.shape), a)):
        z = zbar(bb, aa, p)
        assert np.linalg.matrix_rank(z) <= r
        (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(bb, aa, p)
        np.testing.assert_allclose(ps_b @ ps_a, z, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sp_b @ sp_a, z, rtol=1e-10, atol=1e-12)
    # ... but not in general (so the checks above can fail).
    (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(b, a, p)
    assert not np.allclose(ps_b @ ps_a, zbar(b, a, p))
    assert not np.allclose(sp_b @ sp_a, zbar(b, a, p))
    # Identical clients: R_w = 0 for both, but SP's factor mismatch stays > 0 (SVD re-gauging).
    same_b, same_a = np.broadcast_to(b[0], b.shape), np.broadcast_to(a[0], a.shape)
    (sp_b, sp_a), (ps_b, ps_a), _ = _sp_ps(same_b, same_a, p)
    for pq in (sp_b @ sp_a, ps_b @ ps_a):
        assert weak_mismatch(pq, same_b, same_a, p) < 1e-20
    assert strong_mismatch(ps_b, same_b, p) + strong_mismatch(ps_a, same_a, p) < 1e-20
    assert strong_mismatch(sp_b, same_b, p) + strong_mismatch(sp_a, same_a, p) > 1e-2
    # The standard init (B = 0): SP broadcasts zeros, losing A entirely.
    zero_b = np.zeros_like(same_b)
    (sp_b, sp_a), _, _ = _sp_ps(zero_b, same_a, p)
    np.testing.assert_allclose(strong_mismatch(sp_a, same_a, p), np.sum(a[0] ** 2), rtol=1e-12)
