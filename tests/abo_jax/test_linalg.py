"""abo_jax.linalg.svd: numpy's SVD per matrix, jax's derivatives, and no jaxlib SVD kernel on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax.linalg import svd


def _batch(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, dtype=jnp.float64)


def test_svd_under_nested_vmap_and_jit_matches_numpy_per_matrix():
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


def test_float32_stays_float32_and_nan_input_gives_nan():
    x = _batch((5, 3)).astype(jnp.float32)
    u, s, vt = jax.jit(svd)(x)
    assert u.dtype == s.dtype == vt.dtype == jnp.float32
    np.testing.assert_allclose(s, np.linalg.svd(np.asarray(x), compute_uv=False), rtol=1e-5)
    bad = x.at[0, 0].set(jnp.nan)
    assert np.all(np.isnan(jax.jit(lambda a: svd(a, compute_uv=False))(bad)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the callback path is CPU-only")
def test_no_jaxlib_svd_kernel_on_cpu():
    # jaxlib's gesdd kernel blocks a pool thread on the pool itself and can hang (module doc).
    fn = jax.jit(jax.vmap(lambda a: (svd(a), jax.jacfwd(lambda b: svd(b, compute_uv=False))(a))))
    text = fn.lower(_batch((4, 6, 3))).as_text()
    assert "gesdd" not in text and "gesvd" not in text
    assert "callback" in text
    plain = jax.jit(jax.vmap(lambda a: jnp.linalg.svd(a, full_matrices=False))).lower(
        _batch((4, 6, 3))
    )
    assert "gesdd" in plain.as_text()  # the check above can fail


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_svd_derivatives_match_jax_and_finite_differences(shape):
    x = _batch(shape, seed=2)
    dx = _batch(shape, seed=3)
    _, tan = jax.jvp(svd, (x,), (dx,))
    _, ref_tan = jax.jvp(lambda a: jnp.linalg.svd(a, full_matrices=False), (x,), (dx,))
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


def test_rejects_non_matrices():
    with pytest.raises(ValueError, match="one matrix"):
        svd(jnp.ones((2, 3, 4)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the callback path is CPU-only")
def test_operators_and_round_metrics_never_call_the_jaxlib_svd_kernel():
    import abo_jax
    from theory.certify import available_operators
    from theory.functionals import round_metrics

    m, d, k, r = 4, 12, 10, 2
    key_b, key_a = jax.random.split(jax.random.key(0))
    clients = {
        "l1": abo_jax.LoRAFactors(
            b=jax.random.normal(key_b, (m, d, r)), a=jax.random.normal(key_a, (m, r, k))
        )
    }
    weights = jnp.full((m,), 1.0 / m)
    names = list(available_operators()) + ["hetlora", "rbla", "flexlora"]
    for name in names:
        factory = getattr(abo_jax, name)
        abo = (
            factory(np.array([1, 2, 2, 1]))
            if name in ("hetlora", "rbla", "flexlora")
            else factory()
        )
        state = abo.init(clients, key=jax.random.key(1))

        def round_fn(c, w, s, abo=abo):
            broadcast, _, _ = abo.aggregate(c, w, s)
            return broadcast, round_metrics(c, w, broadcast)

        runs = jax.vmap(round_fn, in_axes=(0, None, None))  # a run axis, as the simulator's
        stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), clients)
        text = jax.jit(runs).lower(stacked, weights, state).as_text()
        assert "gesdd" not in text and "gesvd" not in text, name
