"""Trajectory conditions: PS bounded weak+strong, SP weak bounded / strong unbounded; bad input."""

import jax
import numpy as np
import pytest

from abo_jax import product_sum, sum_product
from theory.conditions import (
    BOUNDED,
    INSUFFICIENT,
    UNBOUNDED,
    growth_verdict,
    sup_ratio,
    trajectory_conditions,
)
from theory.problems import least_squares_problem, run_federated, run_sweep

ETAS = [0.04, 0.01, 0.0025, 0.000625]


@pytest.fixture(scope="module")
def sweeps():
    prob = least_squares_problem(jax.random.key(0), clients=4, d=3, k=5, rank=1)
    out = {}
    for name, op in [("sp", sum_product()), ("ps", product_sum())]:
        runs = run_sweep(prob, op, etas=ETAS, rounds=8, local_steps=3, key=jax.random.key(1))
        out[name] = {e: {k: np.asarray(v) for k, v in r.records.items()} for e, r in runs.items()}
    return out


def test_ps_bounded_weak_and_strong(sweeps):
    rep = trajectory_conditions(sweeps["ps"])
    assert rep.weak_verdict == BOUNDED and rep.strong_verdict == BOUNDED, rep.table()
    assert np.isfinite(rep.weak.constant) and rep.weak.constant > 0


def test_sp_weak_bounded_strong_unbounded(sweeps):
    rep = trajectory_conditions(sweeps["sp"])
    assert rep.weak_verdict == BOUNDED, rep.table()
    assert rep.strong_verdict == UNBOUNDED, rep.table()
    # driven by round 0's SVD re-split of the B = 0 start: A is replaced by sqrt(S) V^T
    assert rep.strong_a.slope < -1.5
    r_a = sweeps["sp"][ETAS[-1]]["strong_mismatch_a"]
    assert int(np.argmax(r_a)) == 0


def test_sweep_matches_single_runs(sweeps):
    prob = least_squares_problem(jax.random.key(0), clients=4, d=3, k=5, rank=1)
    run = run_federated(
        prob, product_sum(), eta=ETAS[1], rounds=8, local_steps=3, key=jax.random.key(1)
    )
    np.testing.assert_allclose(
        run.records["weak_mismatch"], sweeps["ps"][ETAS[1]]["weak_mismatch"], rtol=1e-9
    )
    # identity 1 along the run
    rec = sweeps["sp"][ETAS[0]]
    np.testing.assert_allclose(
        rec["weak_mismatch"], rec["weak_optimum"] + rec["product_error"], rtol=1e-8
    )


def test_growth_verdict_rule():
    s = [1e-1, 1e-2, 1e-3]
    assert growth_verdict("x", s, [1.0, 1.1, 1.2]).verdict == BOUNDED
    ev = growth_verdict("x", s, [1.0, 1e2, 1e4])
    assert ev.verdict == UNBOUNDED and ev.constant == float("inf")
    assert growth_verdict("x", s, [1.0, 3.0, 9.0]).verdict == INSUFFICIENT  # slope -0.48
    assert growth_verdict("x", s[:2], [1.0, 1.0]).verdict == INSUFFICIENT
    assert growth_verdict("x", [1e-3, 1.1e-3, 1.2e-3], [1, 1, 1]).verdict == INSUFFICIENT
    assert growth_verdict("x", s, [0.0, 1e-14, 0.0]).verdict == BOUNDED


def test_bad_inputs():
    good = {
        "weak_mismatch": np.ones(3),
        "strong_mismatch_b": np.ones(3),
        "strong_mismatch_a": np.ones(3),
    }
    with pytest.raises(ValueError, match="eta: the step size must be finite and > 0"):
        trajectory_conditions({0.0: good, 0.1: good})
    with pytest.raises(ValueError, match="eta: the step size"):
        sup_ratio(np.ones(3), -1.0)
    short = {k: v[:1] for k, v in good.items()}
    with pytest.raises(ValueError, match="need at least 2 to estimate a sup"):
        trajectory_conditions({0.1: short})
    with pytest.raises(ValueError, match="NaN or Inf"):
        trajectory_conditions({0.1: {**good, "weak_mismatch": np.array([1.0, np.nan, 1.0])}})
    with pytest.raises(ValueError, match="missing 'strong_mismatch_a'"):
        trajectory_conditions({0.1: {"weak_mismatch": np.ones(3), "strong_mismatch_b": np.ones(3)}})
    with pytest.raises(ValueError, match="different numbers of rounds"):
        trajectory_conditions({0.1: good, 0.01: {k: np.ones(4) for k in good}})
    with pytest.raises(ValueError, match="eta: the step size must be > 0"):
        run_federated(
            least_squares_problem(jax.random.key(0)), product_sum(), eta=0.0, rounds=2,
            local_steps=1, key=jax.random.key(0),
        )  # fmt: skip
    rep = trajectory_conditions({0.1: good})  # one eta: cannot decide
    assert rep.weak_verdict == INSUFFICIENT and "need at least 3" in rep.weak.note
