"""First-order consistency (theory.consistency, theory.certify.check_consistency) against closed forms.

Every expected number here is derived by hand in theory/consistency.py's docstring: the chi^2 defect
of weight-mismatched operators, the HetLoRA fixed-point defect from the coverage, RBLA's rescaling
1/coverage, the weak limit ||A_0||_2^2 + ||B_0||_2^2 of consistent operators and PS's strong limit 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wrong_operators as wo

import theory
from abo_jax import (
    Broadcast,
    LoRAFactors,
    fedsa,
    ffa,
    hetlora,
    make_abo,
    product_sum,
    rbla,
    rolora,
    sum_product,
)
from abo_jax.aggregation import EmptyState
from theory.certify import HOLDS, VIOLATED, certify, check_consistency, with_client_ranks
from theory.consistency import (
    consistency_at,
    limit_forms,
    linearize_operator,
    mean_operator_defect,
)

RNG = np.random.default_rng(3)
B0 = RNG.normal(size=(4, 2))
A0 = RNG.normal(size=(2, 3))
P = np.array([0.5, 0.3, 0.2])


def test_mean_operator_defect_closed_form():
    assert mean_operator_defect([1, 0, 0], P) == pytest.approx(np.sqrt(0.5 / 0.5))
    assert mean_operator_defect([1, 0], [0.2, 0.8]) == pytest.approx(2.0)
    assert mean_operator_defect(P, P) == 0.0


@pytest.mark.parametrize("b0", [np.zeros((4, 2)), B0], ids=["standard", "generic"])
def test_sp_and_ps_consistent_with_closed_form_limits(b0):
    bound = np.linalg.norm(A0, 2) ** 2 + np.linalg.norm(b0, 2) ** 2
    for op in (product_sum(), sum_product()):
        pt = consistency_at(op, b0, A0, P)
        assert pt.holds and pt.fixed_point and pt.rescaling is None, pt
        # equality for m >= 2 (Cauchy-Schwarz with the mean drift set to zero)
        assert pt.weak_limit == pytest.approx(bound, rel=1e-6)
        assert pt.weak_bound == pytest.approx(bound, rel=1e-12)
    ps = consistency_at(product_sum(), b0, A0, P)
    assert ps.factor_mean and ps.strong_limit == pytest.approx(1.0, rel=1e-9)
    sp = consistency_at(sum_product(), b0, A0, P)
    assert sp.strong_limit == np.inf  # SP re-splits the factors: not a factor fixed point


def test_sp_at_standard_start_uses_differences_and_is_linear():
    pt = consistency_at(sum_product(), np.zeros((4, 2)), A0, P)
    assert pt.method == "finite differences"  # the SVD's jvp is not finite at repeated zeros
    assert pt.linearity_error < 1e-6 and pt.differentiable


def test_client_zero_defect_and_unweighted_mean():
    for w in (P, np.array([0.7, 0.3]), np.array([0.25, 0.25, 0.5])):
        m = len(w)
        b0 = B0 if m == 3 else B0[:, :1]
        a0 = A0 if m == 3 else A0[:1]
        pt = consistency_at(wo.client_zero_only(), b0, a0, w)
        assert pt.fixed_point and not pt.holds
        want = np.sqrt((1 - w[0]) / w[0])
        assert pt.defect == pytest.approx(want, rel=1e-9)
        assert pt.direction_defect == pytest.approx(want, rel=1e-5)  # re-checked on the operator
        um = consistency_at(wo.unweighted_mean(), b0, a0, w)
        assert um.defect == pytest.approx(mean_operator_defect(np.full(m, 1 / m), w), rel=1e-9)
    assert consistency_at(wo.unweighted_mean(), B0, A0, np.full(3, 1 / 3)).holds


def test_client_zero_weak_limit_matches_small_delta_ratio():
    op = wo.client_zero_only()
    lin = linearize_operator(op, B0, A0, P)
    pt = consistency_at(op, B0, A0, P, linearization=lin)
    u, v = np.asarray(pt.direction["U"]), np.asarray(pt.direction["V"])
    weak, strong = limit_forms(lin, B0, A0, P, u, v)
    delta = 1e-6
    b, a = B0[None] + delta * u, A0[None] + delta * v
    prod = b[0] @ a[0]
    r_w = sum(P[i] * np.sum((prod - b[i] @ a[i]) ** 2) for i in range(3))
    r_s = sum(P[i] * (np.sum((b[0] - b[i]) ** 2) + np.sum((a[0] - a[i]) ** 2)) for i in range(3))
    assert r_w / delta**2 == pytest.approx(weak, rel=1e-4)
    assert r_s / delta**2 == pytest.approx(strong, rel=1e-9)
    assert weak <= pt.weak_limit * (1 + 1e-12)


def test_hetlora_not_fixed_point_rbla_rescaled():
    ranks = np.array([2, 1, 1])
    cov = np.array([1.0, P[0]])  # coverage c_j = sum of the weights of clients holding j
    het = consistency_at(hetlora(ranks), B0, A0, P, ranks=ranks)
    assert not het.fixed_point and not het.holds
    # client 0 (rank 2) receives B_0 C^2 A_0 instead of B_0 A_0
    got = het.fixed_point_defect
    want = np.abs(B0 @ np.diag(cov**2) @ A0 - B0 @ A0).max() / max(np.abs(B0 @ A0).max(), 1.0)
    assert got == pytest.approx(want, rel=1e-9)
    rb = consistency_at(rbla(ranks), B0, A0, P, ranks=ranks)
    assert rb.fixed_point and rb.holds and rb.strict_defect > 0.1
    np.testing.assert_allclose(rb.rescaling["B"], 1 / cov, rtol=1e-6)
    np.testing.assert_allclose(rb.rescaling["A"], 1 / cov, rtol=1e-6)
    # equal ranks: both are PS
    for op in (hetlora([2, 2, 2]), rbla([2, 2, 2])):
        pt = consistency_at(op, B0, A0, P)
        assert pt.holds and pt.rescaling is None


def test_frozen_and_personalized_operators():
    assert consistency_at(ffa(), B0, A0, P, trainable=(True, False)).holds
    chk = check_consistency(rolora())  # both phases: B trained, then A
    assert chk.status == HOLDS
    assert len(chk.points) == 16  # 2 shapes x 2 weights x 2 starts x 2 phases
    fs = check_consistency(fedsa(), personalized=True)
    assert fs.status == VIOLATED and fs.fixed_point == HOLDS and "personalized" in fs.note


def test_check_consistency_witness_is_smallest():
    chk = check_consistency(wo.client_zero_only())
    assert chk.status == VIOLATED and chk.fixed_point == HOLDS
    w = chk.witness
    assert w["shape"] == {"m": 2, "d": 1, "k": 1, "r": 1} and w["start_kind"] == "standard"
    assert w["defect"] == pytest.approx(1.0, rel=1e-9)  # p = (1/2, 1/2): ((1 - p_0)/p_0)^(1/2)
    assert "WARNING" in chk.note
    um = check_consistency(wo.unweighted_mean())
    assert um.status == VIOLATED and um.witness["weights"] == [0.7, 0.3]
    het = check_consistency(with_client_ranks(hetlora))
    assert het.status == VIOLATED and het.witness["ranks"] == [2, 1, 1]
    assert check_consistency(with_client_ranks(rbla)).status == HOLDS


def _single_copy_ps():
    """PS returning one global copy (no client axis), the form of the simulator's redesign."""

    def core(clients, weights, state):
        f = clients["layer0"]
        mean = LoRAFactors(
            jnp.einsum("c,cdr->dr", weights, f.b), jnp.einsum("c,crk->rk", weights, f.a)
        )
        return Broadcast({"layer0": mean}, None), state, {}

    return make_abo(lambda clients=None, *, key=None: EmptyState(), core)


def test_single_copy_broadcast_accepted():
    assert consistency_at(_single_copy_ps(), B0, A0, P).holds
    assert check_consistency(_single_copy_ps()).status == HOLDS


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (wo.returns_none, "returned None"),
        (wo.no_client_axis_wrong_shape, "one copy .no client axis., shape"),
        (wo.wrong_structure, "tree structure"),
    ],
)
def test_certify_rejects_broken_operators(factory, match):
    with pytest.raises(ValueError, match=match):
        certify(factory())
    with pytest.raises(ValueError, match=match):
        check_consistency(factory())


def test_certify_rejects_fixed_client_ranks():
    op = hetlora([2, 1, 1])
    if getattr(getattr(op, "traits", None), "client_ranks", None) is None:
        pytest.skip("operators do not declare their ranks in this version of abo_jax")
    with pytest.raises(ValueError, match="with_client_ranks"):
        certify(op)


def test_two_sided_forms_agree_with_real_operator_at_small_delta():
    """The exact limit at a direction equals the real operator's ratio as delta -> 0 (SP, B_0 = 0)."""
    op = sum_product()
    b0 = np.zeros((4, 2))
    lin = linearize_operator(op, b0, A0, P)
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 2, 3))
    norm = np.sqrt(np.dot(P, (u**2).sum((1, 2)) + (v**2).sum((1, 2))))
    u, v = u / norm, v / norm
    weak, _ = limit_forms(lin, b0, A0, P, u, v)
    ratios = []
    for delta in (1e-3, 1e-5):
        clients = {"layer0": LoRAFactors(jnp.asarray(b0 + delta * u), jnp.asarray(A0 + delta * v))}
        bc, _, _ = op.aggregate(clients, jnp.asarray(P), op.init(clients, key=jax.random.key(0)))
        f = bc.factors["layer0"]
        pq = np.asarray(f.b).reshape(-1, 4, 2)[0] @ np.asarray(f.a).reshape(-1, 2, 3)[0]
        prods = np.einsum("cdr,crk->cdk", b0 + delta * u, A0 + delta * v)
        ratios.append(np.dot(P, ((pq[None] - prods) ** 2).sum((1, 2))) / delta**2)
    assert ratios[1] == pytest.approx(weak, rel=1e-4)
    assert abs(ratios[1] - weak) < abs(ratios[0] - weak) + 1e-12


def test_consistency_rate_constants_follow_their_formula():
    # D = gap / E; M = (L (R + E^2 G^2 (C_A^2 + C_B^2)) + G (K E^2 G^2 + c_rho)) / E.
    rate = theory.consistency_rate(
        weak_constant=2.0,
        remainder=0.5,
        smoothness=3.0,
        gradient_bound=0.5,
        local_steps=2,
        factor_bounds=(1.0, 2.0),
        initial_gap=4.0,
        local_remainder=0.25,
    )
    drift = 2**2 * 0.5**2  # E^2 G^2 = 1
    assert rate.d == pytest.approx(4.0 / 2)
    assert rate.m == pytest.approx((3.0 * (2.0 + drift * 5.0) + 0.5 * (0.5 * drift + 0.25)) / 2)
    t = 400
    eta = rate.best_eta(t)
    assert rate.bound(eta, t) == pytest.approx(2 * np.sqrt(rate.d * rate.m / t))
    assert rate.bound(eta, t) < min(rate.bound(eta * 1.1, t), rate.bound(eta / 1.1, t))
    with pytest.raises(ValueError, match="smoothness"):
        theory.consistency_rate(
            weak_constant=1.0, remainder=0.5, smoothness=-1.0, gradient_bound=1.0,
            local_steps=1, factor_bounds=(1.0, 1.0), initial_gap=1.0,
        )  # fmt: skip
    with pytest.raises(ValueError, match="local_steps"):
        theory.consistency_rate(
            weak_constant=1.0, remainder=0.5, smoothness=1.0, gradient_bound=1.0,
            local_steps=0, factor_bounds=(1.0, 1.0), initial_gap=1.0,
        )  # fmt: skip
