"""abo_jax.linalg: QR/SVD equal numpy's per matrix, and vmapped calls never batch LAPACK on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax.linalg import qr, svd


def _batch(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, dtype=jnp.float64)


def test_svd_under_nested_vmap_matches_numpy_per_matrix():
    x = _batch((3, 2, 7, 4))
    u, s, vt = jax.jit(jax.vmap(jax.vmap(svd)))(x)
    assert u.shape == (3, 2, 7, 4) and s.shape == (3, 2, 4) and vt.shape == (3, 2, 4, 4)
    for i in range(3):
        for j in range(2):
            ref = np.linalg.svd(np.asarray(x[i, j]), compute_uv=False)
            np.testing.assert_allclose(s[i, j], ref, rtol=1e-12)
            np.testing.assert_allclose((u[i, j] * s[i, j][None, :]) @ vt[i, j], x[i, j], atol=1e-12)
            np.testing.assert_allclose(u[i, j].T @ u[i, j], np.eye(4), atol=1e-12)
    values = jax.vmap(lambda a: svd(a, compute_uv=False))(x[0])
    np.testing.assert_allclose(values, s[0], rtol=1e-12)


def test_qr_under_vmap_reconstructs_with_orthonormal_q():
    x = _batch((5, 6, 3), seed=1)
    q, r = jax.vmap(qr)(x)
    np.testing.assert_allclose(q @ r, x, atol=1e-12)
    np.testing.assert_allclose(
        jnp.swapaxes(q, 1, 2) @ q, np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(np.tril(np.asarray(r), -1), 0.0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the sequential path is CPU-only")
def test_vmapped_calls_lower_to_unbatched_lapack_inside_a_loop():
    # A batched LAPACK custom call splits over the intra-op pool and can deadlock (module doc).
    text = jax.jit(jax.vmap(svd)).lower(_batch((4, 6, 3))).as_text()
    calls = [line for line in text.splitlines() if "custom_call" in line and "gesdd" in line]
    assert calls, "expected a LAPACK SVD call"
    assert all("tensor<4x" not in line for line in calls), calls
    assert "stablehlo.while" in text
    qr_text = jax.jit(jax.vmap(qr)).lower(_batch((4, 6, 3))).as_text()
    assert "stablehlo.while" in qr_text


def test_rejects_non_matrices():
    with pytest.raises(ValueError, match="one matrix"):
        svd(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="one matrix"):
        qr(jnp.ones(3))


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_svd_derivatives_match_jax_and_finite_differences(shape):
    x = _batch(shape, seed=2)
    dx = _batch(shape, seed=3)
    out, tan = jax.jvp(svd, (x,), (dx,))
    ref_out, ref_tan = jax.jvp(lambda a: jnp.linalg.svd(a, full_matrices=False), (x,), (dx,))
    for got, want in zip(tan, ref_tan, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-9)
    eps = 1e-6
    s_plus = svd(x + eps * dx, compute_uv=False)
    s_minus = svd(x - eps * dx, compute_uv=False)
    np.testing.assert_allclose(tan[1], (s_plus - s_minus) / (2 * eps), atol=1e-7)
    _, ds = jax.jvp(lambda a: svd(a, compute_uv=False), (x,), (dx,))
    np.testing.assert_allclose(ds, tan[1], atol=1e-12)

    # reverse mode through a vmapped call (a product is invariant to the factors' signs)
    def loss(a):
        u, s, vt = svd(a)
        return jnp.sum(jnp.sin((u[:, :2] * s[None, :2]) @ vt[:2]))

    def loss_ref(a):
        u, s, vt = jnp.linalg.svd(a, full_matrices=False)
        return jnp.sum(jnp.sin((u[:, :2] * s[None, :2]) @ vt[:2]))

    xs = jnp.stack([x, 2.0 * x + dx])
    np.testing.assert_allclose(
        jax.vmap(jax.grad(loss))(xs), jax.vmap(jax.grad(loss_ref))(xs), atol=1e-9
    )


def test_qr_derivatives_match_jax():
    x = _batch((6, 3), seed=4)
    dx = _batch((6, 3), seed=5)
    _, tan = jax.jvp(qr, (x,), (dx,))
    _, ref = jax.jvp(jnp.linalg.qr, (x,), (dx,))
    for got, want in zip(tan, ref, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-10)
    loss = lambda a: jnp.sum(jnp.cos(qr(a)[1]))
    loss_ref = lambda a: jnp.sum(jnp.cos(jnp.linalg.qr(a)[1]))
    xs = jnp.stack([x, x + dx])
    np.testing.assert_allclose(
        jax.vmap(jax.grad(loss))(xs), jax.vmap(jax.grad(loss_ref))(xs), atol=1e-10
    )
