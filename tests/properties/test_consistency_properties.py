"""Property tests of first-order consistency (theory.consistency), float64.

* The exact limit of ``R / delta^2`` along a drift (the linearization's quadratic form) equals the
  real operator's ratio at small ``delta``.
* SP and PS are consistent at random consensus points, the standard ``B_0 = 0`` start included.
* The defect of the client-0-only operator is its closed form ``((1 - p_0) / p_0)^{1/2}``.
* The remainder constant of the rate bound: ``||Pi - Zbar|| <= delta^2 / 2`` for SP and PS.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from abo_jax import LoRAFactors, product_sum, sum_product
from theory.consistency import consistency_at, limit_forms, linearize_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "theory"))
import wrong_operators as wo  # noqa: E402

# one object per operator: linearizations are jitted once per operator and shape
OPERATORS = {"sp": sum_product(), "ps": product_sum(), "client0": wo.client_zero_only()}
SHAPES = [(2, 2, 2, 1), (3, 3, 2, 2)]  # (m, d, k, r)
FEW = settings(max_examples=8)


@st.composite
def consensus_points(draw, standard=None):
    """``(b0 (d, r), a0 (r, k), weights (m,))`` with every weight >= 0.05."""
    m, d, k, r = draw(st.sampled_from(SHAPES))
    elems = st.floats(-2, 2, allow_nan=False, width=64)
    a0 = draw(hnp.arrays(np.float64, (r, k), elements=elems))
    is_standard = draw(st.booleans()) if standard is None else standard
    b0 = np.zeros((d, r)) if is_standard else draw(hnp.arrays(np.float64, (d, r), elements=elems))
    raw = draw(hnp.arrays(np.float64, (m,), elements=st.floats(0.05, 1.0, width=64)))
    assume(np.linalg.norm(a0, 2) > 0.1)  # a zero start has no first-order term to compare
    return b0, a0, raw / raw.sum()


def _ratio(op, b0, a0, w, u, v, delta):
    """``(R_w, R_B + R_A) / delta^2`` of the real operator (float64)."""
    b, a = b0[None] + delta * u, a0[None] + delta * v
    clients = {"layer0": LoRAFactors(jnp.asarray(b), jnp.asarray(a))}
    bc, _, _ = op.aggregate(clients, jnp.asarray(w), op.init(clients, key=jax.random.key(0)))
    f = bc.factors["layer0"]
    m = w.shape[0]
    p = np.broadcast_to(np.asarray(f.b), b.shape) if f.b.ndim == 2 else np.asarray(f.b)
    q = np.broadcast_to(np.asarray(f.a), a.shape) if f.a.ndim == 2 else np.asarray(f.a)
    prod, own = np.einsum("cdr,crk->cdk", p, q), np.einsum("cdr,crk->cdk", b, a)
    r_w = np.dot(w, ((prod - own) ** 2).sum((1, 2)))
    r_s = np.dot(w, ((p - b) ** 2).sum((1, 2)) + ((q - a) ** 2).sum((1, 2)))
    del m
    return r_w / delta**2, r_s / delta**2


@FEW
@given(consensus_points(standard=False), st.sampled_from(["ps", "client0"]), st.integers(0, 2**31))
def test_linearized_limit_equals_small_delta_ratio(point, name, seed):
    b0, a0, w = point
    op = OPERATORS[name]
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(w.shape[0], *b0.shape)), rng.normal(size=(w.shape[0], *a0.shape))
    norm = np.sqrt(np.dot(w, (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    u, v = u / norm, v / norm
    lin = linearize_operator(op, b0, a0, w)
    weak, strong = limit_forms(lin, b0, a0, w, u, v)
    r_w, r_s = _ratio(op, b0, a0, w, u, v, 1e-6)
    # the ratios differ from their limits by O(delta) relative to the start's size
    size = 1.0 + np.abs(b0).max() + np.abs(a0).max()
    assert abs(r_w - weak) <= 1e-4 * size**2 * max(weak, 1.0)
    assert abs(r_s - strong) <= 1e-4 * size**2 * max(strong, 1.0)
    # and the sup over unit drifts dominates every direction
    pt = consistency_at(op, b0, a0, w, linearization=lin)
    assert weak <= pt.weak_limit * (1 + 1e-9) and strong <= pt.strong_limit * (1 + 1e-9)


@FEW
@given(consensus_points(standard=True))
def test_sp_weak_limit_equals_small_delta_ratio_at_standard_start(point):
    """SP's product is differentiable at ``B_0 = 0`` (Eckart-Young) though its factors are not."""
    b0, a0, w = point
    op = OPERATORS["sp"]
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(w.shape[0], *b0.shape)), rng.normal(size=(w.shape[0], *a0.shape))
    norm = np.sqrt(np.dot(w, (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    u, v = u / norm, v / norm
    lin = linearize_operator(op, b0, a0, w)
    weak, _ = limit_forms(lin, b0, a0, w, u, v)
    r_w, _ = _ratio(op, b0, a0, w, u, v, 1e-6)
    assert abs(r_w - weak) <= 1e-4 * (1 + np.abs(a0).max()) ** 2 * max(weak, 1.0)


@FEW
@given(consensus_points(), st.sampled_from(["sp", "ps"]))
def test_sp_and_ps_consistent_at_random_consensus_points(point, name):
    b0, a0, w = point
    pt = consistency_at(OPERATORS[name], b0, a0, w)
    assert pt.fixed_point, pt.fixed_point_defect
    assert pt.holds, (pt.strict_defect, pt.method, pt.linearity_error)
    assert pt.rescaling is None
    bound = np.linalg.norm(a0, 2) ** 2 + np.linalg.norm(b0, 2) ** 2
    np.testing.assert_allclose(pt.weak_limit, bound, rtol=1e-5)


@FEW
@given(consensus_points())
def test_client_zero_defect_closed_form(point):
    b0, a0, w = point
    pt = consistency_at(OPERATORS["client0"], b0, a0, w)
    assert pt.fixed_point and not pt.holds
    np.testing.assert_allclose(pt.defect, np.sqrt((1 - w[0]) / w[0]), rtol=1e-8)


@FEW
@given(consensus_points(), st.floats(1e-3, 1e-1), st.integers(0, 2**31))
def test_remainder_of_sp_and_ps_at_most_half_delta_squared(point, delta, seed):
    """The remainder constant of the rate bound: ``||Pi - Zbar|| <= K delta^2`` with ``K <= 1/2``
    for unit drifts; PS's remainder is exactly the covariance ``-delta^2 sum_i p_i (U_i - Ubar)(V_i -
    Vbar)`` and SP's is at most its norm (Eckart-Young against the rank-r product of the means)."""
    b0, a0, w = point
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(w.shape[0], *b0.shape)), rng.normal(size=(w.shape[0], *a0.shape))
    norm = np.sqrt(np.dot(w, (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    u, v = u / norm, v / norm
    b, a = b0[None] + delta * u, a0[None] + delta * v
    zbar = np.einsum("c,cdr,crk->dk", w, b, a)
    ubar, vbar = np.einsum("c,cdr->dr", w, u), np.einsum("c,crk->rk", w, v)
    cov = np.einsum("c,cdr,crk->dk", w, u - ubar, v - vbar)
    clients = {"layer0": LoRAFactors(jnp.asarray(b), jnp.asarray(a))}
    for name in ("ps", "sp"):
        op = OPERATORS[name]
        bc, _, _ = op.aggregate(clients, jnp.asarray(w), op.init(clients, key=jax.random.key(0)))
        f = bc.factors["layer0"]
        pq = np.asarray(f.b).reshape(-1, *b0.shape)[0] @ np.asarray(f.a).reshape(-1, *a0.shape)[0]
        remainder = np.linalg.norm(pq - zbar)
        scale = max(1.0, np.abs(zbar).max())
        if name == "ps":
            np.testing.assert_allclose(pq - zbar, -(delta**2) * cov, atol=1e-12 * scale)
        assert remainder <= delta**2 * np.linalg.norm(cov) + 1e-12 * scale
        assert remainder <= 0.5 * delta**2 + 1e-12 * scale
