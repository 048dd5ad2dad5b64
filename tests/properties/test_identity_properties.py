"""Property tests of DESIGN.md identities 1-9 (float64), for every operator where they apply.

SP is compared by products (SVD signs and rotations are arbitrary); degenerate draws (near-equal
singular values at the truncation cut, ill-conditioned gauges) are excluded with ``assume``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from abo_jax import LoRAFactors, product_sum, sum_product
from abo_jax.aggregation import trainable_factors
from theory import functionals as fn
from theory import strategies as abo_st
from theory.certify import available_operators

SP, PS = sum_product(), product_sum()

# A few fixed shapes (m, d, k, r) so that each compiles once: the stacked-QR path of SP
# (m r < min(d, k)), the dense path, one client, rank 1 and 2, wide and tall.
SHAPES = [(1, 3, 2, 1), (2, 4, 3, 1), (3, 5, 4, 2), (4, 6, 6, 1), (2, 2, 5, 2)]


def shapes(min_clients=1, max_clients=4, max_rank=3):
    ok = [
        abo_st.Shape(*s) for s in SHAPES if min_clients <= s[0] <= max_clients and s[3] <= max_rank
    ]
    return st.sampled_from(ok)


def client_sets(layers=1, min_clients=1, max_clients=4, max_rank=3):
    return abo_st.client_sets(layers=layers, shape=shapes(min_clients, max_clients, max_rank))


def _np(f):
    return np.asarray(f.b), np.asarray(f.a)


def _zbar(b, a, w):
    return np.einsum("c,cdr,crk->dk", np.asarray(w), b, a)


def _product(abo, clients, w, scale=1.0):
    """Effective broadcast product per client ``(m, d, k)``: ``P_i Q_i + base_delta / s``."""
    key = jax.random.key(0)
    bc, _, _ = abo.aggregate(clients, w, abo.init(clients, key=key))
    f = bc.factors["layer0"]
    if f.b.ndim == 2:  # a global operator's one copy: every client's start
        assert abo.traits.one_start
        m = np.shape(w)[0]
        f = LoRAFactors(
            np.broadcast_to(f.b, (m, *f.b.shape)), np.broadcast_to(f.a, (m, *f.a.shape))
        )
    prod = np.einsum("cdr,crk->cdk", f.b, f.a)
    if bc.base_delta is not None:
        delta = np.asarray(jax.tree.leaves(bc.base_delta)[0])
        prod = prod + (delta if delta.ndim == 3 else delta[None]) / scale
    return prod


def _rel(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return np.max(np.abs(x - y)) / max(1.0, np.max(np.abs(y)))


def _cut_gap_ok(s, r):
    """Singular values at the cut are separated (the rank-r truncation is well defined)."""
    s = np.concatenate([s, [0.0]])
    return r >= len(s) - 1 or s[r - 1] - s[r] > 1e-6 * max(1.0, s[0])


@given(client_sets(layers=2), st.data())
def test_identity1_weak_decomposition(case, data):
    bc = {
        n: LoRAFactors(
            jnp.asarray(data.draw(abo_st.arrays(f.b.shape[1:]))),
            jnp.asarray(data.draw(abo_st.arrays(f.a.shape[1:]))),
        )
        for n, f in case.clients.items()
    }
    excess = []
    for n, f in case.clients.items():
        b, a = _np(f)
        excess.append(
            np.sum((np.asarray(bc[n].b) @ np.asarray(bc[n].a) - _zbar(b, a, case.weights)) ** 2)
        )
    got = fn.weak_mismatch(case.clients, case.weights, bc).layers
    want = np.asarray(fn.weak_optimum(case.clients, case.weights).layers) + np.asarray(excess)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@given(client_sets())
def test_identity2_sp_tail_eckart_young(case):
    b, a = _np(case.clients["layer0"])
    r = b.shape[2]
    zbar = _zbar(b, a, case.weights)
    s = np.linalg.svd(zbar, compute_uv=False)
    assume(_cut_gap_ok(s, r))
    prod = _product(SP, case.clients, case.weights)
    np.testing.assert_allclose(
        np.sum((zbar - prod[0]) ** 2), np.sum(s[r:] ** 2), rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(prod, np.broadcast_to(prod[0], prod.shape), atol=0)


@given(client_sets(), st.data())
def test_identity3_sp_is_best_rank_r_broadcast(case, data):
    f = case.clients["layer0"]
    w = case.weights
    sp_bc, _, _ = SP.aggregate(case.clients, w)
    ps_bc, _, _ = PS.aggregate(case.clients, w)
    other = {"layer0": LoRAFactors(jnp.asarray(data.draw(abo_st.arrays(f.b.shape[1:]))),
                                   jnp.asarray(data.draw(abo_st.arrays(f.a.shape[1:]))))}  # fmt: skip
    r_sp = float(fn.weak_mismatch(case.clients, w, sp_bc.factors).total)
    tol = 1e-9 * max(1.0, r_sp)
    assert r_sp <= float(fn.weak_mismatch(case.clients, w, ps_bc.factors).total) + tol
    assert r_sp <= float(fn.weak_mismatch(case.clients, w, other).total) + tol


@given(client_sets())
def test_identity4_ps_error_covariance_form(case):
    b, a = _np(case.clients["layer0"])
    w = np.asarray(case.weights)
    bbar, abar = np.einsum("c,cdr->dr", w, b), np.einsum("c,crk->rk", w, a)
    cov = np.einsum("c,cdr,crk->dk", w, b - bbar, a - abar)
    np.testing.assert_allclose(_zbar(b, a, w) - bbar @ abar, cov, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        fn.ps_aggregation_error(case.clients, case.weights)[0], cov, atol=1e-12
    )
    prod = _product(PS, case.clients, case.weights)
    np.testing.assert_allclose(_zbar(b, a, w) - prod[0], cov, rtol=1e-9, atol=1e-9)


@given(client_sets(), st.data())
def test_identity5_strong_decomposition_and_ps_optimal(case, data):
    f = case.clients["layer0"]
    w = np.asarray(case.weights)
    p = data.draw(abo_st.arrays(f.b.shape[1:]))
    q = data.draw(abo_st.arrays(f.a.shape[1:]))
    b, a = _np(f)
    rb, ra = fn.strong_mismatch(
        case.clients, case.weights, {"layer0": LoRAFactors(jnp.asarray(p), jnp.asarray(q))}
    )
    sb, sa = fn.strong_optimum(case.clients, case.weights)
    bbar, abar = np.einsum("c,cdr->dr", w, b), np.einsum("c,crk->rk", w, a)
    np.testing.assert_allclose(rb.total, sb.total + np.sum((p - bbar) ** 2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ra.total, sa.total + np.sum((q - abar) ** 2), rtol=1e-9, atol=1e-12)
    ps_bc, _, _ = PS.aggregate(case.clients, case.weights)
    pb, pa = fn.strong_mismatch(case.clients, case.weights, ps_bc.factors)
    np.testing.assert_allclose(pb.total, sb.total, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pa.total, sa.total, rtol=1e-9, atol=1e-12)


@given(client_sets(), st.sampled_from(["sp", "ps"]))
def test_identity6_strong_implies_weak(case, which):
    bc, _, _ = (SP if which == "sp" else PS).aggregate(case.clients, case.weights)
    b, a = _np(case.clients["layer0"])
    p, q = _np(bc.factors["layer0"])  # one copy: SP and PS are global operators
    for i in range(b.shape[0]):
        lhs = np.linalg.norm(p @ q - b[i] @ a[i])
        rhs = np.linalg.norm(p - b[i]) * np.linalg.norm(q, 2) + np.linalg.norm(
            b[i], 2
        ) * np.linalg.norm(q - a[i])
        assert lhs <= rhs * (1 + 1e-12) + 1e-12
    bound = fn.strong_to_weak_bound(case.clients, case.weights, bc.factors).total
    assert (
        float(fn.weak_mismatch(case.clients, case.weights, bc.factors).total)
        <= float(bound) * (1 + 1e-12) + 1e-12
    )


@given(client_sets(max_rank=2), st.data())
def test_identity7_sp_gauge_invariant(case, data):
    f = case.clients["layer0"]
    m, _, r = f.b.shape
    g = np.stack([data.draw(abo_st.arrays((r, r))) + 3.0 * np.eye(r) for _ in range(m)])
    assume(all(np.linalg.cond(gi) < 1e3 for gi in g))
    gauged = {"layer0": LoRAFactors(jnp.einsum("cdr,crs->cds", f.b, g),
                                    jnp.einsum("crs,csk->crk", np.linalg.inv(g), f.a))}  # fmt: skip
    b, a = _np(f)
    s = np.linalg.svd(_zbar(b, a, case.weights), compute_uv=False)
    assume(_cut_gap_ok(s, r))
    scale = max(1.0, s[0])
    assert (
        _rel(_product(SP, gauged, case.weights), _product(SP, case.clients, case.weights))
        < 1e-8 * scale
    )


def test_identity7_ps_is_not_gauge_invariant():
    # two clients, 1x1 factors: gauge client 0 by g = 2; PS's product changes, Zbar does not
    f = LoRAFactors(jnp.array([[[1.0]], [[1.0]]]), jnp.array([[[1.0]], [[3.0]]]))
    g = LoRAFactors(jnp.array([[[2.0]], [[1.0]]]), jnp.array([[[0.5]], [[3.0]]]))
    w = jnp.array([0.5, 0.5])
    assert (
        abs(_product(PS, {"layer0": f}, w)[0, 0, 0] - _product(PS, {"layer0": g}, w)[0, 0, 0]) > 0.1
    )


@given(client_sets(min_clients=1, max_clients=1))
def test_identity8_one_client_is_exact(case):
    b, a = _np(case.clients["layer0"])
    np.testing.assert_allclose(
        _product(PS, case.clients, case.weights)[0], b[0] @ a[0], rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        _product(SP, case.clients, case.weights)[0], b[0] @ a[0], rtol=1e-7, atol=1e-7
    )


@given(client_sets(min_clients=2), st.sampled_from(["a", "b"]))
def test_identity8_shared_factor_makes_ps_exact(case, shared):
    f = case.clients["layer0"]
    f = (
        f._replace(a=jnp.broadcast_to(f.a[:1], f.a.shape))
        if shared == "a"
        else f._replace(b=jnp.broadcast_to(f.b[:1], f.b.shape))
    )
    clients = {"layer0": f}
    zbar = _zbar(*_np(f), case.weights)
    np.testing.assert_allclose(_product(PS, clients, case.weights)[0], zbar, rtol=1e-9, atol=1e-9)
    if shared == "a":  # rank(Zbar) <= r: SP is exact too
        np.testing.assert_allclose(
            _product(SP, clients, case.weights)[0], zbar, rtol=1e-7, atol=1e-7
        )


@given(client_sets(min_clients=2))
def test_identity8_identical_clients_zero_weak_mismatch(case):
    f = case.clients["layer0"]
    same = {
        "layer0": LoRAFactors(
            jnp.broadcast_to(f.b[:1], f.b.shape), jnp.broadcast_to(f.a[:1], f.a.shape)
        )
    }
    for abo in (SP, PS):
        bc, _, _ = abo.aggregate(same, case.weights)
        r_w = float(fn.weak_mismatch(same, case.weights, bc.factors).total)
        assert r_w <= 1e-12 * max(1.0, float(jnp.sum(f.b[0] ** 2) * jnp.sum(f.a[0] ** 2)))


def test_identity8_sp_regauges_identical_clients():
    # identical clients at an unbalanced gauge: R_w = 0 but SP's factor mismatch is not
    f = LoRAFactors(jnp.array([[[4.0]], [[4.0]]]), jnp.array([[[1.0]], [[1.0]]]))
    w = jnp.array([0.5, 0.5])
    bc, _, _ = SP.aggregate({"layer0": f}, w)
    assert float(fn.weak_mismatch({"layer0": f}, w, bc.factors).total) < 1e-20
    rb, ra = fn.strong_mismatch({"layer0": f}, w, bc.factors)
    np.testing.assert_allclose(float(rb.total + ra.total), (4 - 2) ** 2 + (1 - 2) ** 2, rtol=1e-12)


OPERATORS = available_operators()


@given(
    client_sets(min_clients=2),
    st.sampled_from(sorted(OPERATORS)),
    st.randoms(use_true_random=False),
)
def test_identity9_permutation_invariance(case, name, random):
    abo = OPERATORS[name]()
    m = case.weights.shape[0]
    perm = list(range(m))
    random.shuffle(perm)
    perm = np.asarray(perm)
    f = case.clients["layer0"]
    # operators that freeze a factor (FFA-LoRA, RoLoRA) need the clients' copies identical
    trainable = trainable_factors(abo.init(case.clients, key=jax.random.key(0)))
    f = LoRAFactors(
        jnp.where(trainable.b, f.b, jnp.broadcast_to(f.b[:1], f.b.shape)),
        jnp.where(trainable.a, f.a, jnp.broadcast_to(f.a[:1], f.a.shape)),
    )
    clients = {"layer0": f}
    b, a = _np(f)
    s = np.linalg.svd(_zbar(b, a, case.weights), compute_uv=False)
    assume(_cut_gap_ok(s, b.shape[2]))
    permuted = jax.tree.map(lambda x: x[perm], clients)
    base = _product(abo, clients, case.weights)
    moved = _product(abo, permuted, case.weights[perm])
    assert _rel(moved, base[perm]) < 1e-8 * max(1.0, s[0])


@given(abo_st.heterogeneous_client_sets(shape=shapes(min_clients=2)))
def test_heterogeneous_ranks_identities_1_and_5(case):
    # masked (zero-padded) components stay consistent: PS and SP decompositions still hold
    f = case.clients["layer0"]
    for i, r_i in enumerate(np.asarray(case.ranks["layer0"])):
        assert np.all(np.asarray(f.b)[i, :, r_i:] == 0) and np.all(np.asarray(f.a)[i, r_i:] == 0)
    for abo in (SP, PS):
        bc, _, _ = abo.aggregate(case.clients, case.weights)
        r_w = fn.weak_mismatch(case.clients, case.weights, bc.factors).total
        parts = (
            fn.weak_optimum(case.clients, case.weights).total
            + fn.product_error(case.clients, case.weights, bc.factors).total
        )
        np.testing.assert_allclose(r_w, parts, rtol=1e-8, atol=1e-10)
        rb, _ = fn.strong_mismatch(case.clients, case.weights, bc.factors)
        sb, _ = fn.strong_optimum(case.clients, case.weights)
        eb, _ = fn.factor_error(case.clients, case.weights, bc.factors)
        np.testing.assert_allclose(rb.total, sb.total + eb.total, rtol=1e-9, atol=1e-12)
