"""No hang on non-finite input, no silent integer averaging, half precision, truthful weights."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax as aj
from abo_jax.aggregation import weighted_sum, weights_diagnostics
from abo_jax.linalg import _host_svd, qr, svd
from abo_jax.lora import LoRAFactors

M, R = 3, 2
RANKS = [1, 2, 2]
OPERATORS = {
    "sum_product": aj.sum_product,
    "product_sum": aj.product_sum,
    "fedex": aj.fedex,
    "flora": aj.flora,
    "ffa": aj.ffa,
    "rolora": aj.rolora,
    "fedsa": aj.fedsa,
    "hetlora": lambda: aj.hetlora(RANKS),
    "rbla": lambda: aj.rbla(RANKS),
    "flexlora": lambda: aj.flexlora(RANKS),
}
# (d, k) = (6, 5): m r = 6 >= min(d, k), the dense SVD path (the shape of the reported hang);
# (40, 30): the stacked QR + core SVD path.
SHAPES = {"dense": (6, 5), "stacked": (40, 30)}
WEIGHTS = np.array([0.2, 0.3, 0.5])


def _clients(d, k, dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(M, d, R))
    a = np.broadcast_to(rng.normal(size=(1, R, k)), (M, R, k))  # shared A: FFA/RoLoRA accept it
    return {"w": LoRAFactors(jnp.asarray(b, dtype), jnp.asarray(a, dtype))}


def _bounded(fn, seconds=60.0):
    """Runs ``fn()`` in a daemon thread: a call that never returns fails the test, not the suite."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call did not return within {seconds} s (a hang)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize("path", sorted(SHAPES))
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_non_finite_input_under_jit_returns_at_once_with_finite_false(name, bad, path):
    d, k = SHAPES[path]
    clients = _clients(d, k)
    clients = {"w": clients["w"]._replace(b=clients["w"].b.at[0, 1, 1].set(bad))}
    abo = OPERATORS[name]()
    state = abo.init(clients, key=jax.random.key(0))
    _, _, diag = _bounded(
        lambda: jax.block_until_ready(jax.jit(abo.aggregate)(clients, WEIGHTS, state))
    )
    assert not bool(diag["finite"])
    assert bool(diag["weights_valid"])
    with pytest.raises(ValueError, match="NaN or Inf"):  # concrete inputs: an error instead
        abo.aggregate(clients, WEIGHTS, state)


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_host_svd_never_hands_a_non_finite_matrix_to_lapack(bad, monkeypatch):
    x = np.random.default_rng(1).normal(size=(3, 6, 5))
    x[1, 2, 3] = bad
    seen = []
    real = np.linalg.svd

    def spy(a, *args, **kwargs):
        seen.append(np.all(np.isfinite(a)))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", spy)
    u, s, vt = _host_svd(x)
    assert seen and all(seen)  # LAPACK saw finite matrices only
    assert np.all(np.isnan(s[1])) and np.all(np.isnan(u[1])) and np.all(np.isnan(vt[1]))
    for i in (0, 2):  # the finite matrices of the stack are factorized as usual
        np.testing.assert_allclose(s[i], real(x[i], compute_uv=False), rtol=1e-12)
        np.testing.assert_allclose((u[i] * s[i]) @ vt[i], x[i], atol=1e-12)


def test_svd_and_qr_of_non_finite_matrices_are_nan_under_jit_and_vmap():
    x = jax.random.normal(jax.random.key(0), (2, 6, 5), jnp.float64).at[0, 0, 0].set(jnp.inf)
    s = _bounded(lambda: jax.jit(jax.vmap(lambda a: svd(a, compute_uv=False)))(x))
    assert np.all(np.isnan(s[0])) and np.all(np.isfinite(s[1]))
    q, r = jax.jit(qr)(x[0])
    assert not np.all(np.isfinite(q)) and not np.all(np.isfinite(r))


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_integer_factors_are_rejected_by_every_operator(name):
    clients = _clients(6, 5, jnp.int32)
    abo = OPERATORS[name]()
    state = abo.init(clients, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"clients\['w'\]\.b: dtype int32 is not .*floating"):
        abo.aggregate(clients, WEIGHTS, state)
    with pytest.raises(ValueError, match="not a real floating-point"):  # under jit too
        jax.jit(abo.aggregate)(clients, WEIGHTS, state)


def test_weighted_sum_refuses_integers_instead_of_truncating_the_weights():
    x = jnp.arange(6, dtype=jnp.int32).reshape(3, 2)
    with pytest.raises(ValueError, match=r"leaf <root>: dtype int32"):
        weighted_sum(x, jnp.full((3,), 1 / 3))
    np.testing.assert_allclose(
        weighted_sum(x.astype(jnp.float64), jnp.full((3,), 1 / 3)), [2.0, 3.0], rtol=1e-12
    )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("path", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_half_precision_works_on_every_operator_and_agrees_with_float64(name, path, dtype):
    d, k = SHAPES[path]
    clients = _clients(d, k, jnp.float64)
    half = jax.tree.map(lambda x: x.astype(dtype), clients)
    up = jax.tree.map(lambda x: x.astype(jnp.float64), half)  # the same values, in float64
    abo = OPERATORS[name]()
    state = abo.init(clients, key=jax.random.key(0))
    bc, _, diag = jax.jit(abo.aggregate)(half, WEIGHTS, state)
    ref, _, _ = abo.aggregate(up, WEIGHTS, state)
    assert bool(diag["finite"])
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(bc.factors))
    # Compare products (SVD signs are arbitrary); bfloat16 keeps 8 bits, float16 11.
    tol = 0.05 if dtype == jnp.bfloat16 else 0.01
    got, want = bc.factors["w"], ref.factors["w"]
    prod = jnp.asarray(got.b, jnp.float64) @ jnp.asarray(got.a, jnp.float64)
    scale = float(jnp.max(jnp.abs(want.b @ want.a)))
    np.testing.assert_allclose(prod, want.b @ want.a, atol=tol * scale)


@pytest.mark.parametrize(
    "weights, valid",
    [
        ([0.2, 0.3, 0.5], True),
        ([0.5, 0.5, 0.5], False),  # sums to 1.5
        ([1.2, -0.2, 0.0], False),  # negative
        ([0.0, 0.0, 0.0], False),  # all zero
        ([np.nan, 0.5, 0.5], False),
    ],
)
def test_weights_diagnostics_tell_the_truth_under_jit(weights, valid):
    clients = _clients(6, 5)
    w = jnp.asarray(weights)
    _, _, diag = jax.jit(aj.product_sum().aggregate)(clients, w, aj.aggregation.EmptyState())
    assert bool(diag["weights_valid"]) is valid
    np.testing.assert_allclose(diag["weights_sum"], np.sum(weights), rtol=1e-12)
    if not valid:  # concrete: an error naming the weights
        with pytest.raises(ValueError, match="weights: "):
            aj.product_sum().aggregate(clients, w)
    # normalize=True: only sign, finiteness and a positive sum count
    norm = weights_diagnostics(w, normalize=True)
    assert bool(norm["weights_valid"]) is bool(
        np.all(np.isfinite(weights)) and np.all(np.asarray(weights) >= 0) and np.sum(weights) > 0
    )


def test_no_clients_says_so():
    empty = {"w": LoRAFactors(jnp.zeros((0, 6, 2)), jnp.zeros((0, 2, 5)))}
    with pytest.raises(ValueError, match=r"client axis is empty \(m = 0"):
        aj.product_sum().aggregate(empty, jnp.zeros((0,)))
    with pytest.raises(ValueError, match=r"no clients \(m = 0\)"):
        aj.aggregation.validate_weights(np.zeros(0), 0)
