"""The round as values: federated_round + wrappers, operator traits read from the ABO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import abo_jax as aj
from abo_jax.lora import LoRAFactors

FEAT, CLASSES = 6, 3


def _model(**kw):
    kw.setdefault("ranks", 2)
    return aj.paper_mlp(FEAT, (5, 4), CLASSES, dtype=jnp.float64, **kw)


def _numbers(tree):
    def one(x):
        if jnp.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(one, tree)


def _leaves_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, _numbers(a), _numbers(b))


def test_composed_round_is_make_simulation_bit_for_bit(rng, clients_fn):
    data = clients_fn(rng, [6, 4, 5], FEAT, CLASSES)
    keys = jax.random.split(jax.random.key(2), 2)
    sim = aj.make_simulation(_model(), aj.sum_product(), batch_size=4, num_runs=2)
    rnd = aj.jit_round(
        aj.over_runs(aj.federated_round(_model(), aj.sum_product(), batch_size=4), 2)
    )
    s_sim, s_rnd = sim.init(keys, data), rnd.init(keys, data)
    _leaves_equal(s_sim, s_rnd)
    for _ in range(2):
        s_sim, m_sim = sim.round(s_sim, data)
        s_rnd, m_rnd = rnd.apply(s_rnd, data)
    _leaves_equal((s_sim, m_sim), (s_rnd, m_rnd))
    # aj.run drives either form.
    test = (data.x[0], data.y[0])
    h_sim, _ = aj.run(sim, data, test, rounds=2, key=keys, progress=False)
    h_rnd, _ = aj.run(rnd, data, test, rounds=2, key=keys, progress=False)
    _leaves_equal(h_sim, h_rnd)


def _shift_update(model, optimizer, frozen, trainable, inputs, labels, mask, key, **kw):
    """A local update in closed form: every trainable leaf moves by +1, loss 0."""
    moved = jax.tree.map(lambda x: x + 1.0, trainable)
    return aj.simulation.ClientUpdate(
        moved, kw["opt_state"], jnp.zeros(()), jnp.zeros((), jnp.int32)
    )


def test_the_local_update_is_a_value(rng, clients_fn):
    # PS averages B and A, so when every client adds 1 to every factor the broadcast is start + 1
    # (and the biases, FedAvg-ed, too): no attribute of the library is patched to get there.
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    rnd = aj.jit_round(aj.federated_round(_model(), aj.product_sum(), client_update=_shift_update))
    state0 = rnd.init(jax.random.key(0), data)
    state1, metrics = rnd.apply(state0, data)
    jax.tree.map(
        lambda new, old: np.testing.assert_allclose(new, old + 1.0, rtol=0, atol=1e-12),
        state1.clients,
        state0.clients,
    )
    assert float(metrics["train_loss"]) == 0.0
    with pytest.raises(ValueError, match="client_update: expected a function"):
        aj.federated_round(_model(), aj.product_sum(), client_update="sgd")


def test_scan_rounds_equals_applying_the_round_that_many_times(rng, clients_fn):
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    rnd = aj.federated_round(_model(), aj.product_sum(), batch_size=4)
    one, three = aj.jit_round(rnd), aj.jit_round(aj.scan_rounds(rnd, 3))
    state = one.init(jax.random.key(1), data)
    scanned, stacked = three.apply(state, data)
    losses = []
    for _ in range(3):
        state, m = one.apply(state, data)
        losses.append(m["train_loss"])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
        _numbers(scanned),
        _numbers(state),
    )
    np.testing.assert_allclose(stacked["train_loss"], np.stack(losses), rtol=1e-12)
    with pytest.raises(ValueError, match="num_rounds must be positive"):
        aj.scan_rounds(rnd, 0)


def test_wrappers_check_their_order_and_arguments():
    rnd = aj.federated_round(_model(), aj.product_sum())
    with pytest.raises(ValueError, match="already has a run axis"):
        aj.over_runs(aj.over_runs(rnd, 2), 2)
    with pytest.raises(ValueError, match="num_runs must be positive"):
        aj.over_runs(rnd, 0)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("runs",))
    with pytest.raises(ValueError, match="apply over_runs first"):
        aj.on_mesh(rnd, mesh)
    with pytest.raises(ValueError, match="one axis, named"):
        aj.on_mesh(rnd, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",)))
    with pytest.raises(ValueError, match="size must be positive"):
        aj.client_groups(0)


def _clients(rng, m=3, d=6, r=2, k=5):
    b = jnp.asarray(rng.normal(size=(m, d, r)))
    a = jnp.asarray(rng.normal(size=(m, r, k)))
    return {"w": LoRAFactors(b, a)}


RANKS = np.array([1, 2, 2])


def _every_operator():
    return {
        "sum_product": aj.sum_product(),
        "product_sum": aj.product_sum(),
        "fedex": aj.fedex(),
        "flora": aj.flora(),
        "ffa": aj.ffa(),
        "rolora": aj.rolora(),
        "fedsa": aj.fedsa(),
        "hetlora": aj.hetlora(RANKS),
        "rbla": aj.rbla(RANKS),
        "flexlora": aj.flexlora(RANKS),
    }


@pytest.mark.parametrize("name", sorted(_every_operator()))
def test_declared_traits_match_what_the_operator_does(rng, name):
    abo = _every_operator()[name]
    clients = _clients(rng)
    if name in ("ffa", "rolora"):  # they require the shared (frozen) factor to agree
        clients = {"w": LoRAFactors(clients["w"].b, jnp.broadcast_to(clients["w"].a[0], (3, 2, 5)))}
    weights = jnp.array([0.5, 0.3, 0.2])
    state = abo.init(clients, key=jax.random.key(0))
    broadcast, _, _ = abo.aggregate(clients, weights, state)
    traits = abo.traits
    assert traits.corrects_base == bool(jax.tree.leaves(broadcast.base_delta))
    f = broadcast.factors["w"]
    heterogeneous = traits.client_ranks is not None
    # The declared form: one copy from a global operator with one rank, else one per client.
    assert f.b.ndim == (2 if traits.one_start else 3) and traits.one_start == (
        not (traits.personalized or heterogeneous)
    )
    differs = f.b.ndim == 3 and not (np.allclose(f.b, f.b[:1]) and np.allclose(f.a, f.a[:1]))
    # Personal broadcasts differ across clients; heterogeneous ones only by each client's rank.
    assert differs == (traits.personalized or heterogeneous)
    if heterogeneous:
        np.testing.assert_array_equal(traits.client_ranks, RANKS)
    mask = traits.trainable(state)
    expected = {"ffa": (True, False), "rolora": (True, False)}.get(name, (True, True))
    assert (bool(mask.b), bool(mask.a)) == expected


def test_rolora_declares_the_alternation_through_its_traits(rng):
    abo = aj.rolora()
    clients = _clients(rng)
    clients = {"w": LoRAFactors(clients["w"].b, jnp.broadcast_to(clients["w"].a[0], (3, 2, 5)))}
    state = abo.init(clients, key=jax.random.key(0))
    _, state, _ = abo.aggregate(clients, jnp.full((3,), 1 / 3), state)
    mask = abo.traits.trainable(state)
    assert (bool(mask.b), bool(mask.a)) == (False, True)


def test_ranks_and_scales_are_given_once_to_the_operator(rng, clients_fn):
    data = clients_fn(rng, [6, 4, 5], FEAT, CLASSES)
    model = _model(ranks=2)
    # Taken from the operator: ranks mask the factors, alpha / r_i are the scales.
    rnd = aj.federated_round(model, aj.hetlora(RANKS, alpha=4.0))
    state = rnd.init(jax.random.key(0), data)
    np.testing.assert_allclose(state.lora_scale, 4.0 / RANKS)
    a = np.asarray(next(iter(state.clients.lora.values())).a)
    assert np.all(a[0, 1:] == 0) and np.any(a[1, 1] != 0)  # client 0 keeps rank 1
    # The same again is fine; anything else is a contradiction, named.
    aj.federated_round(model, aj.hetlora(RANKS), client_ranks=RANKS)
    with pytest.raises(ValueError, match="contradicts the operator's declared ranks"):
        aj.federated_round(model, aj.hetlora(RANKS), client_ranks=np.array([2, 2, 2]))
    with pytest.raises(ValueError, match="contradicts the scale the operator assumes"):
        aj.federated_round(model, aj.fedex(2.0)).init(jax.random.key(0), data, lora_scale=1.0)
    state = aj.federated_round(model, aj.fedex(2.0)).init(jax.random.key(0), data)
    np.testing.assert_array_equal(state.lora_scale, np.full(3, 2.0))


def test_a_personalized_operator_is_evaluated_per_client_by_default(rng, clients_fn):
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    test = (data.x[0], data.y[0])
    own = aj.jit_round(aj.federated_round(_model(), aj.fedsa(), batch_size=4))
    state, _ = own.apply(own.init(jax.random.key(0), data), data)
    per_client = aj.simulation.make_evaluate(_model(), personalized=True)(state, *test)
    global_ = aj.simulation.make_evaluate(_model(), personalized=False)(state, *test)
    jax.tree.map(  # jitted against eager: the same sums up to rounding
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
        own.evaluate(state, *test),
        per_client,
    )
    assert float(per_client["loss"]) != float(global_["loss"])


def test_init_and_metrics_are_checked_with_clear_messages(rng, clients_fn):
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    rnd = aj.federated_round(_model(), aj.product_sum())
    with pytest.raises(TypeError, match="key"):
        rnd.init(None, data)
    with pytest.raises(TypeError, match="key"):
        aj.over_runs(rnd, 2).init(0, data)
    bad = aj.federated_round(_model(), aj.product_sum(), metrics_fn=lambda c, w, b: None)
    with pytest.raises(TypeError, match="metrics_fn"):
        bad.apply(bad.init(jax.random.key(0), data), data)
    clash = aj.federated_round(
        _model(), aj.product_sum(), metrics_fn=lambda c, w, b: {"train_loss": jnp.zeros(())}
    )
    with pytest.raises(ValueError, match="clash"):
        clash.apply(clash.init(jax.random.key(0), data), data)


def test_the_test_set_is_placed_by_the_round():
    # Without a mesh the identity; an unknown kind is named.
    rnd = aj.federated_round(_model(), aj.product_sum())
    x, y = np.zeros((4, FEAT)), np.zeros((4,), np.int32)
    assert rnd.shard((x, y), "test") == (x, y)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("clients",))
    placed = aj.on_mesh(rnd, mesh).shard((x, y), "test")
    np.testing.assert_array_equal(placed[0], x)
    with pytest.raises(ValueError, match="'test'"):
        aj.on_mesh(rnd, mesh).shard(x, "other")
