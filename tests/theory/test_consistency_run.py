"""Consistency on a run: scikit-learn's digits, one class per client (theory.problems).

Client 0 only satisfies the weak and strong conditions (tests/theory/test_certify.py) yet its global
model learns client 0's objective: it predicts class 0 for (almost) every test image, while SP and
PS, consistent, learn all classes. At heterogeneous ranks HetLoRA, not a fixed point, destroys the
components held by few clients (they shrink by ``c_j^2`` per round, ``c_j`` their coverage) and
its global objective stalls; RBLA, consistent up to a rescaling, keeps them and descends.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wrong_operators as wo

from abo_jax import hetlora, product_sum, rbla, sum_product
from theory.consistency import consistency_at
from theory.problems import client_losses, one_class_digits_problem, run_federated

ROUNDS, E, ETA = 20, 5, 0.5


@pytest.fixture(scope="module")
def digits():
    return one_class_digits_problem(rank=4, samples=60)


def _global_model(run, client=0):
    b, a = run.starts.b[-1, client], run.starts.a[-1, client]
    return np.asarray(run.bases[-1, client] + b @ a)  # (10, 64)


def _run(problem, op):
    return run_federated(problem, op, eta=ETA, rounds=ROUNDS, local_steps=E, key=jax.random.key(0))


def test_client_zero_learns_client_zeros_class_sp_ps_learn_all(digits):
    problem, (x_test, y_test) = digits
    x_test, y_test = np.asarray(x_test), np.asarray(y_test)
    results = {}
    for name, op in {
        "client0": wo.client_zero_only(),
        "SP": sum_product(),
        "PS": product_sum(),
    }.items():
        run = _run(problem, op)
        pred = np.argmax(x_test @ _global_model(run).T, axis=1)
        f = [float(jnp.dot(problem.weights, client_losses(problem, run, t))) for t in (0, -1)]
        results[name] = ((pred == y_test).mean(), (pred == 0).mean(), f)
    acc0, frac0, f0 = results["client0"]
    assert frac0 > 0.95 and acc0 < 0.15, results  # class 0 everywhere: f_0's minimizer
    assert f0[1] > f0[0], results  # the global objective F gets worse
    for name in ("SP", "PS"):
        acc, frac, f = results[name]
        assert acc > 0.3 and frac < 0.3 and f[1] < f[0] - 0.05, (name, results)
    # certify's verdict on the same operator with this problem's ten weights (a small layer)
    rng = np.random.default_rng(0)
    b0, a0 = np.zeros((2, 1)), rng.normal(size=(1, 3))
    w = np.asarray(problem.weights)
    pt = consistency_at(wo.client_zero_only(), b0, a0, w)
    assert not pt.holds and pt.defect == pytest.approx(3.0, rel=1e-9)  # ((1 - 0.1) / 0.1)^(1/2)
    assert consistency_at(product_sum(), b0, a0, w).holds


def test_hetlora_loses_components_rbla_keeps_them(digits):
    problem, _ = digits
    ranks = [4, 4] + [1] * 8  # components 1..3 held by clients 0 and 1 only: coverage 0.2
    out = {}
    for name, op in {"HetLoRA": hetlora(ranks), "RBLA": rbla(ranks)}.items():
        run = _run(problem, op)
        b, a = run.starts.b[-1, 0], run.starts.a[-1, 0]
        high = float(jnp.linalg.norm(b[:, 1:] @ a[1:]))  # the components few clients hold
        f = [float(jnp.dot(problem.weights, client_losses(problem, run, t))) for t in (0, -1)]
        out[name] = (high, f)
    # HetLoRA shrinks them by 0.2^2 per round; training regrows them only a little each round
    assert out["HetLoRA"][0] < 1e-2 * out["RBLA"][0], out
    assert out["RBLA"][1][1] < out["HetLoRA"][1][1] - 0.1, out
