"""Aggregation accumulated over client groups: the same numbers as the stacked round, one group held."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sim_helpers import synthetic_clients

import abo_jax as aj

M, FEAT, HIDDEN, CLASSES, R = 7, 6, (8,), 3, 2


def _clients(rng, m=M, d=5, k=4, r=R):
    return {
        "w": aj.LoRAFactors(
            jnp.asarray(rng.normal(size=(m, d, r))), jnp.asarray(rng.normal(size=(m, r, k)))
        ),
        "bias": jnp.asarray(rng.normal(size=(m, d))),
        "frozen": None,
    }


def _streamed(abo, clients, weights, cuts):
    """``abo.streamed`` over the groups ``clients[cuts[j]:cuts[j + 1]]``."""
    one = jax.tree.map(lambda x: x[0], clients)
    sums = abo.streamed.zeros(one)
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        group = jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], clients)
        sums = abo.streamed.add(sums, group, weights[lo:hi])
    return abo.streamed.finish(sums, weights, None, one)


@pytest.mark.parametrize("name", ["product_sum", "sum_product", "sum_product_rank1"])
def test_streamed_form_equals_aggregate(name):
    rng = np.random.default_rng(0)
    abo = {
        "product_sum": aj.product_sum(),
        "sum_product": aj.sum_product(),
        "sum_product_rank1": aj.sum_product(rank=1),
    }[name]
    clients = _clients(rng)
    w = rng.dirichlet(np.ones(M))
    w[2] = 0.0
    weights = jnp.asarray(w / w.sum())
    bc, _, diag = abo.aggregate(clients, weights)
    bc_s, _, diag_s = _streamed(abo, clients, weights, [0, 3, 4, M])
    assert sorted(diag_s) == sorted(diag)
    for key in diag:
        np.testing.assert_allclose(diag_s[key], diag[key], rtol=1e-10, atol=1e-12, err_msg=key)
    # SP's factors are defined up to the SVD's signs: compare products (and the biases).
    f, f_s = bc.factors["w"], bc_s.factors["w"]
    assert f_s.b.shape == f.b.shape == (5, R)  # one copy
    np.testing.assert_allclose(f_s.b @ f_s.a, f.b @ f.a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bc_s.factors["bias"], bc.factors["bias"], rtol=1e-12)
    assert bc_s.factors["frozen"] is None and bc_s.base_delta is None


def test_fedavg_full_streamed_and_operators_without_a_form():
    rng = np.random.default_rng(1)
    dense = {"k": jnp.asarray(rng.normal(size=(M, 3, 2)))}
    weights = jnp.full((M,), 1.0 / M)
    bc, _, _ = aj.fedavg_full().aggregate(dense, weights)
    bc_s, _, _ = _streamed(aj.fedavg_full(), dense, weights, [0, 5, M])
    np.testing.assert_allclose(bc_s.factors["k"], bc.factors["k"], rtol=1e-12)
    # Personalized, heterogeneous-rank and base-correcting operators have no streamed form.
    for abo in (aj.fedsa(), aj.hetlora(np.full(M, R)), aj.fedex(scale=1.0)):
        assert abo.streamed is None
    with pytest.raises(ValueError, match="global operator"):
        aj.make_abo(
            lambda clients=None, *, key=None: aj.aggregation.EmptyState(),
            lambda c, w, s: (None, s, {}),
            traits=aj.Traits(personalized=True),
            streamed=aj.product_sum().streamed,
        )


def _round(abo, map_clients, *, precompute=True):
    model = aj.paper_mlp(FEAT, HIDDEN, CLASSES, ranks=R, dtype=jnp.float64)
    return aj.jit_round(
        aj.federated_round(
            model, abo, batch_size=4, local_epochs=2, map_clients=map_clients, precompute=precompute
        )
    )


@pytest.mark.parametrize("abo_name,precompute", [("product_sum", True), ("sum_product", False)])
def test_streamed_round_equals_the_grouped_round(abo_name, precompute):
    rng = np.random.default_rng(2)
    data = synthetic_clients(rng, [9, 4, 7, 8, 3, 6, 5], feat=FEAT, classes=CLASSES)
    abo = getattr(aj, abo_name)()
    ref = _round(abo, aj.client_groups(3))
    got = _round(abo, aj.streamed_groups(3), precompute=precompute)  # 7 = 3 + 3 + 1: clamped
    s_ref = ref.init(jax.random.key(0), data)
    s_got = got.init(jax.random.key(0), data)
    inputs_ref, inputs_got = ref.prepare(s_ref, data), got.prepare(s_got, data)
    for _ in range(2):
        s_ref, m_ref = ref.apply(s_ref, data, inputs_ref)
        s_got, m_got = got.apply(s_got, data, inputs_got)
        assert sorted(m_got) == sorted(m_ref)
        for key in m_ref:
            np.testing.assert_allclose(m_got[key], m_ref[key], rtol=1e-9, atol=1e-12, err_msg=key)
    # SP's broadcast is compared by product (the SVD fixes it up to signs), PS's by value.
    for f_ref, f_got in zip(
        aj.lora.lora_leaves(s_ref.clients.lora),
        aj.lora.lora_leaves(s_got.clients.lora),
        strict=True,
    ):
        np.testing.assert_allclose(f_got.b @ f_got.a, f_ref.b @ f_ref.a, rtol=1e-9, atol=1e-12)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    jax.tree.map(close, s_got.clients.extra, s_ref.clients.extra)


def _trained_shapes(rnd, state, data):
    """Shapes of every intermediate in the round's program that has the clients' axis in front of
    one client's first-layer ``b (d, r)``: the stacked trained factors."""
    d = HIDDEN[0]
    closed = jax.make_jaxpr(lambda s: rnd.apply(s, data))(state)
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                shape = getattr(v.aval, "shape", ())
                if len(shape) == 3 and shape[1:] == (d, R) and shape[0] >= M:
                    found.append(shape)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(closed.jaxpr)
    return found


def test_streamed_round_never_holds_every_clients_trained_factors():
    rng = np.random.default_rng(3)
    data = synthetic_clients(rng, [5] * M, feat=FEAT, classes=CLASSES)
    model = aj.paper_mlp(FEAT, HIDDEN, CLASSES, ranks=R, dtype=jnp.float64)
    stacked = aj.federated_round(model, aj.product_sum(), batch_size=5)
    streamed = aj.federated_round(
        model, aj.product_sum(), batch_size=5, map_clients=aj.streamed_groups(2)
    )
    state = stacked.init(jax.random.key(0), data)
    # The check can fail: the stacked round holds the (m, d, r) trained factors ...
    assert _trained_shapes(stacked, state, data)
    # ... the streamed one only a group's (2, d, r).
    assert not _trained_shapes(streamed, state, data)


def test_streamed_groups_refuses_what_it_cannot_do():
    model = aj.paper_mlp(FEAT, HIDDEN, CLASSES, ranks=R, dtype=jnp.float64)
    with pytest.raises(ValueError, match="no streamed form"):
        aj.federated_round(model, aj.fedsa(), map_clients=aj.streamed_groups(2))
    with pytest.raises(ValueError, match="reset_optimizer=True"):
        aj.federated_round(
            model, aj.product_sum(), map_clients=aj.streamed_groups(2), reset_optimizer=False
        )
    with pytest.raises(ValueError, match="metrics_fn"):
        aj.federated_round(
            model,
            aj.product_sum(),
            map_clients=aj.streamed_groups(2),
            metrics_fn=lambda c, w, b: {},
        )
    with pytest.raises(ValueError, match="positive"):
        aj.streamed_groups(0)
