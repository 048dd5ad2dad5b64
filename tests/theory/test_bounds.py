"""Rate bounds hold on a run; the power iteration matches the dense Hessian; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abo_jax import product_sum, sum_product
from theory.bounds import hessian_norm, rate_bounds
from theory.problems import client_loss, least_squares_problem, logistic_problem, run_federated


def test_power_iteration_matches_dense_hessian(rng):
    prob = logistic_problem(jax.random.key(3), clients=2, samples=10, classes=3, k=4, rank=2)
    from abo_jax import LoRAFactors

    f = LoRAFactors(jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(size=(2, 4))))
    x, y = prob.x[0], prob.y[0]

    def flat_loss(v):
        return client_loss(
            prob.kind, LoRAFactors(v[:6].reshape(3, 2), v[6:].reshape(2, 4)), prob.w0, x, y
        )

    v = jnp.concatenate([f.b.ravel(), f.a.ravel()])
    want = np.max(np.abs(np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(flat_loss))(v)))))
    got = jax.jit(
        lambda f: hessian_norm(
            lambda g: client_loss(prob.kind, g, prob.w0, x, y), f, key=jax.random.key(0), iters=200
        )
    )(f)
    np.testing.assert_allclose(got, want, rtol=1e-6)


ETA, E = 0.02, 2


@pytest.fixture(scope="module")
def runs():
    prob = least_squares_problem(jax.random.key(0), clients=3, samples=16, d=3, k=4, rank=1)
    ops = {"ps": product_sum(), "sp": sum_product()}
    return prob, {
        name: run_federated(prob, op, eta=ETA, rounds=6, local_steps=E, key=jax.random.key(1))
        for name, op in ops.items()
    }


@pytest.mark.parametrize("name", ["ps", "sp"])
def test_rate_bound_holds_on_a_run(runs, name):
    prob, all_runs = runs
    run, eta, e = all_runs[name], ETA, E
    rep = rate_bounds(prob, run, eta=eta, local_steps=e)
    measured = float(np.mean(run.records["grad_sq_norm"]))
    assert rep.measured == pytest.approx(measured)
    assert rep.holds_weak and rep.holds_strong, rep.table()
    assert rep.per_round_weak and rep.per_round_strong, rep.per_round_slack
    assert 1.0 <= rep.factor_weak < np.inf and 1.0 <= rep.factor_strong < np.inf
    # the terms add up as documented: D/(eta E T) + (M + N) eta + F1
    d_term = rep.initial_gap / (eta * e * 6)
    assert rep.bound_weak == pytest.approx(
        d_term + (rep.m_term + rep.n_weak) * eta + rep.first_order_weak
    )
    assert rep.smoothness >= rep.smoothness_power and rep.smoothness >= rep.smoothness_structural
    # least squares: the dense Hessian of F_i is X_i^T X_i / n (times I_d): L_F is its top eigenvalue
    lf = max(np.linalg.eigvalsh(np.asarray(x.T @ x) / x.shape[0])[-1] for x in prob.x)
    np.testing.assert_allclose(rep.dense_smoothness, lf, rtol=1e-6)
    if name == "ps":
        assert rep.first_order_strong < 1e-12  # PS broadcasts the factor average (up to rounding)
    assert "holds" in rep.table()


def test_rate_bound_bad_input(runs):
    prob, all_runs = runs
    run = all_runs["ps"]
    with pytest.raises(ValueError, match="eta: the step size must be > 0"):
        rate_bounds(prob, run, eta=0.0, local_steps=1)
    spread = run._replace(
        records={**run.records, "broadcast_spread": run.records["broadcast_spread"] + 1}
    )
    with pytest.raises(ValueError, match="global operator"):
        rate_bounds(prob, spread, eta=0.01, local_steps=1)
    nan = run._replace(records={**run.records, "loss": run.records["loss"] * np.nan})
    with pytest.raises(ValueError, match="NaN or Inf"):
        rate_bounds(prob, nan, eta=0.01, local_steps=1)
