"""The jitted round: identities against closed forms, sampling, base folding, runs axis, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax as aj
from abo_jax.aggregation._base import Broadcast, make_abo

FEAT, CLASSES = 6, 3


def _model(**kw):
    kw.setdefault("ranks", 2)
    return aj.paper_mlp(FEAT, (5, 4), CLASSES, dtype=jnp.float64, **kw)


def _record_clients(clients, weights, broadcast):
    return {"clients": clients, "weights": weights}


def test_product_sum_identical_clients_broadcast_equals_client_factors(rng, clients_fn):
    data = clients_fn(rng, [9, 9, 9, 9], FEAT, CLASSES, same=True)
    sim = aj.make_simulation(
        _model(), aj.product_sum(), local_epochs=3, batch_size=16, metrics_fn=_record_clients
    )
    state0 = sim.init(jax.random.key(0), data)
    state, metrics = sim.round(state0, data)
    trained = metrics["clients"]
    for name, f in state.clients.lora.items():
        # PS is global: the state holds the one start every client shares (no client axis).
        assert f.b.shape == trained[name].b.shape[1:]
        np.testing.assert_allclose(f.b, trained[name].b[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(f.a, trained[name].a[0], rtol=1e-12, atol=1e-15)
        for i in range(4):
            # Full batches: every client takes the same steps (up to summation order).
            np.testing.assert_allclose(
                trained[name].b[i], trained[name].b[0], rtol=1e-12, atol=1e-15
            )
        assert not np.allclose(f.b, state0.clients.lora[name].b)  # training moved B off 0


def _union_loss(params, frozen, model, data):
    """Mean cross-entropy over the union of the clients' real examples (numpy gather)."""
    mask = np.asarray(data.mask)
    x = np.asarray(data.x)[mask]
    y = np.asarray(data.y)[mask]
    logits = model.apply(frozen, params, model.prepare(frozen, jnp.asarray(x)), 1.0)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(y.shape[0]), y])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_one_full_batch_step_equals_centralized_sgd(rng, clients_fn, mode):
    # Client i takes one full-batch step: W_i = W - lr grad L_i(W), L_i the mean loss over its n_i
    # examples. With p_i = n_i / n, sum_i p_i W_i = W - lr sum_i (n_i / n) grad L_i(W)
    # = W - lr grad (1/n sum over the union) = one centralized SGD step on the union. The same
    # linearity makes PS over LoRA factors (each averaged separately) a centralized step on (B, A).
    data = clients_fn(rng, [7, 3, 5], FEAT, CLASSES)
    lr = 0.3
    model = _model(mode=mode)
    abo = aj.fedavg_full() if mode == "full" else aj.product_sum()
    sim = aj.make_simulation(model, abo, optimizer=optax.sgd(lr), local_epochs=1, batch_size=7)
    state0 = sim.init(jax.random.key(1), data)
    if mode == "lora":  # move B off zero so every factor has a gradient
        lora = jax.tree.map(
            lambda f: f._replace(b=f.b + 0.2), state0.clients.lora, is_leaf=aj.is_lora
        )
        state0 = state0._replace(clients=state0.clients._replace(lora=lora))
    np.testing.assert_allclose(state0.weights, np.array([7, 3, 5]) / 15, rtol=1e-15)
    state, _ = sim.round(state0, data)
    start = state0.clients  # a global operator: one start shared by every client
    grads = jax.grad(_union_loss)(start, state0.frozen, model, data)
    expected = jax.tree.map(lambda p, g: p - lr * g, start, grads)
    got = state.clients
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13), got, expected
    )


def test_round_is_traced_once(rng, clients_fn):
    data = clients_fn(rng, [5, 8, 2], FEAT, CLASSES)
    test = (data.x[0], data.y[0])
    sim = aj.make_simulation(_model(), aj.sum_product(), batch_size=4, max_traces=1)
    hist, _ = aj.run(sim, data, test, rounds=4, key=jax.random.key(0), progress=False)
    assert hist["test_accuracy"].shape == (4,)
    assert sim.round._cache_size() == 1
    chex.clear_trace_counter()


def test_uniform_sampling_weights_and_non_sampled_clients(rng, clients_fn):
    data = clients_fn(rng, [4, 6, 5, 3, 7], FEAT, CLASSES)
    sim = aj.make_simulation(
        _model(), aj.product_sum(), sampling=aj.uniform_sampling(2), batch_size=4,
        metrics_fn=_record_clients,
    )  # fmt: skip
    state = sim.init(jax.random.key(2), data)
    base = np.array([4, 6, 5, 3, 7]) / 25
    seen = set()
    for _ in range(4):
        start = state.clients
        state, metrics = sim.round(state, data)
        w = np.asarray(metrics["weights"])
        taking = w > 0
        assert taking.sum() == 2 == int(metrics["participants"])
        np.testing.assert_allclose(w[taking], base[taking] / base[taking].sum(), rtol=1e-12)
        for name, f in metrics["clients"].items():  # what the ABO saw
            shared = np.broadcast_to(start.lora[name].b, f.b.shape)  # the one start
            np.testing.assert_array_equal(f.b[~taking], shared[~taking])
            assert not np.allclose(f.b[taking], shared[taking])
        seen.update(np.flatnonzero(taking).tolist())
    assert len(seen) > 2  # different clients in different rounds
    # Training all five and discarding three gives the same numbers as training the two sampled.
    all_sim = aj.make_simulation(
        _model(), aj.product_sum(), sampling=aj.uniform_sampling(2), batch_size=4,
        train_only_sampled=False,
    )  # fmt: skip
    s_all = all_sim.init(jax.random.key(2), data)
    for _ in range(4):
        s_all, _ = all_sim.round(s_all, data)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    jax.tree.map(close, s_all.clients, state.clients)


def test_bernoulli_sampling_has_a_participant():
    s = aj.simulation.bernoulli_sampling(0.01)
    for i in range(20):
        assert int(s.sample(jax.random.key(i), 6).sum()) >= 1


def _merge_reset_abo():
    """Folds the weighted mean product into the base and resets the factors (a FLoRA-like ABO)."""

    def init(clients=None, key=None):
        return {"a0": jax.tree.map(lambda f: f.a[0], clients.lora, is_leaf=aj.is_lora)}

    def core(clients, weights, state):
        # The round hands the whole Trainable; the biases (clients.extra) are FedAvg-ed.
        lora = clients.lora
        delta = jax.tree.map(
            lambda f: jnp.einsum("c,cdr,crk->dk", weights, f.b, f.a), lora, is_leaf=aj.is_lora
        )
        factors = jax.tree.map(  # one copy: a global operator's broadcast
            lambda f, a0: aj.LoRAFactors(jnp.zeros_like(f.b[0]), a0),
            lora, state["a0"], is_leaf=aj.is_lora,
        )  # fmt: skip
        extra = aj.aggregation.weighted_sum(clients.extra, weights)
        no_delta = jax.tree.map(lambda x: None, clients.extra)
        return (
            Broadcast(
                clients._replace(lora=factors, extra=extra),
                clients._replace(lora=delta, extra=no_delta),
            ),
            state,
            {},
        )

    return make_abo(init, core, traits=aj.Traits(corrects_base=True))


def test_an_operator_that_corrects_the_base_without_declaring_it_is_refused(rng, clients_fn):
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    undeclared = _merge_reset_abo()._replace(traits=aj.Traits())
    sim = aj.make_simulation(_model(), undeclared, batch_size=4)
    with pytest.raises(ValueError, match="corrects_base=True"):
        sim.init(jax.random.key(3), data)


def test_base_delta_is_folded_and_cache_recomputed(rng, clients_fn):
    data = clients_fn(rng, [6, 4], FEAT, CLASSES)
    sim = aj.make_simulation(_model(), _merge_reset_abo(), batch_size=4, metrics_fn=_record_clients)
    state0 = sim.init(jax.random.key(3), data)
    assert sim.prepare(state0, data) is None  # the base moves, so no run-long cache
    assert sim.prepare_test(state0, data.x[0]) is None  # nor a test-set cache
    state1, m1 = sim.round(state0, data)
    w = np.asarray(m1["weights"])
    for name, f in m1["clients"].items():
        zbar = np.einsum("c,cdr,crk->dk", w, np.asarray(f.b), np.asarray(f.a))
        np.testing.assert_allclose(state1.frozen[name], state0.frozen[name] + zbar, rtol=1e-12)
        np.testing.assert_array_equal(state1.clients.lora[name].b, 0.0)
    # The second round must see the new base: compare with a no-cache model.
    nocache = aj.make_simulation(_model(cache_first_layer=False), _merge_reset_abo(), batch_size=4)
    s_a, _ = sim.round(state1, data)
    s_b, _ = nocache.round(state1, data)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    jax.tree.map(close, (s_a.frozen, s_a.clients), (s_b.frozen, s_b.clients))


def test_precomputed_first_layer_gives_the_same_run(rng, clients_fn):
    data = clients_fn(rng, [6, 4, 5], FEAT, CLASSES)
    test = (data.x[1], data.y[1])
    runs = {}
    for cache in (True, False):
        sim = aj.make_simulation(_model(cache_first_layer=cache), aj.product_sum(), batch_size=4)
        if cache:
            state0 = sim.init(jax.random.key(0), data)
            assert sim.prepare(state0, data)["h0"].shape == (3, 6, 5)
            cached = sim.prepare_test(state0, test[0])  # what run() passes to every evaluate
            assert cached["h0"].shape == (6, 5)
            ev = sim.evaluate(state0, *test, cached)
            jax.tree.map(np.testing.assert_array_equal, ev, sim.evaluate(state0, *test))
        runs[cache], _ = aj.run(sim, data, test, rounds=3, key=jax.random.key(4), progress=False)
    np.testing.assert_allclose(runs[True]["test_loss"], runs[False]["test_loss"], rtol=1e-12)


def test_runs_axis_equals_independent_runs(rng, clients_fn):
    data = clients_fn(rng, [5, 7], FEAT, CLASSES)
    test = (data.x[0], data.y[0])
    keys = jax.random.split(jax.random.key(5), 2)
    lrs = jnp.array([0.01, 0.05])
    opt = lambda hp: aj.paper_sgd(hp["lr"])
    sim2 = aj.make_simulation(_model(), aj.product_sum(), optimizer=opt, batch_size=4, num_runs=2)
    hist2, _ = aj.run(sim2, data, test, rounds=3, key=keys, hparams={"lr": lrs}, progress=False)
    assert hist2["test_loss"].shape == (3, 2)
    state2 = sim2.init(keys, data, hparams={"lr": lrs})
    cached = sim2.prepare_test(state2, test[0])
    jax.tree.map(
        np.testing.assert_array_equal,
        sim2.evaluate(state2, *test),
        sim2.evaluate(state2, *test, cached),
    )
    sim1 = aj.make_simulation(_model(), aj.product_sum(), optimizer=opt, batch_size=4)
    for s in range(2):
        hist1, _ = aj.run(
            sim1, data, test, rounds=3, key=keys[s], hparams={"lr": lrs[s]}, progress=False
        )
        for name in ("test_loss", "train_loss", "test_accuracy"):
            np.testing.assert_allclose(hist2[name][:, s], hist1[name], rtol=1e-11)


def test_metrics_fn_and_history(rng, clients_fn):
    data = clients_fn(rng, [5, 7, 6], FEAT, CLASSES)
    test = (data.x[2], data.y[2])

    def gap(clients, weights, broadcast):
        f, p = clients["dense_1"], broadcast.factors["dense_1"]  # p: PS's one copy, (d, r)
        gaps = jnp.sum(((p.b @ p.a)[None] - f.b @ f.a) ** 2, (1, 2))
        return {"weak": jnp.einsum("c,c->", weights, gaps)}

    sim = aj.make_simulation(_model(), aj.product_sum(), batch_size=4, metrics_fn=gap)
    hist, _ = aj.run(sim, data, test, rounds=4, key=jax.random.key(6), eval_every=2, progress=False)
    assert hist["weak"].shape == (4,) and np.all(hist["weak"] >= 0) and hist["weak"][-1] > 0
    np.testing.assert_array_equal(hist["round"], [1, 2, 3, 4])
    assert (
        np.isnan(hist["test_accuracy"][[0, 2]]).all()
        and np.isfinite(hist["test_accuracy"][[1, 3]]).all()
    )
    assert hist["abo/bytes_up"].shape == (4, 3)


def test_personalized_eval_equals_global_for_identical_clients(rng, clients_fn):
    data = clients_fn(rng, [5, 7], FEAT, CLASSES)
    out = {}
    for mode in ("global", "personalized"):
        sim = aj.make_simulation(_model(), aj.product_sum(), batch_size=4, eval_mode=mode)
        state = sim.init(jax.random.key(8), data, lora_scale=0.5)
        lora = jax.tree.map(
            lambda f: f._replace(b=f.b + 0.3), state.clients.lora, is_leaf=aj.is_lora
        )  # identical non-zero B on every client, as a global operator broadcasts
        out[mode] = sim.evaluate(
            state._replace(clients=state.clients._replace(lora=lora)), data.x[0], data.y[0]
        )
    np.testing.assert_allclose(out["global"]["loss"], out["personalized"]["loss"], rtol=1e-12)


def test_bad_config_errors(rng, clients_fn):
    data = clients_fn(rng, [5, 7], FEAT, CLASSES)
    with pytest.raises(ValueError, match="batch_size"):
        aj.make_simulation(_model(), aj.product_sum(), batch_size=0)
    with pytest.raises(ValueError, match="local_epochs"):
        aj.make_simulation(_model(), aj.product_sum(), local_epochs=0)
    with pytest.raises(ValueError, match="count = 3"):
        aj.make_simulation(_model(), aj.product_sum(), sampling=aj.uniform_sampling(3)).init(
            jax.random.key(0), data
        )
    with pytest.raises(ValueError, match="prob"):
        aj.simulation.bernoulli_sampling(0.0)
    wrong = aj.paper_mlp(FEAT + 1, (5, 4), CLASSES, ranks=2)
    with pytest.raises(ValueError, match="do not match"):
        aj.make_simulation(wrong, aj.product_sum()).init(jax.random.key(0), data)
    with pytest.raises(ValueError, match="labels"):
        aj.make_simulation(aj.paper_mlp(FEAT, (5, 4), 2, ranks=2), aj.product_sum()).init(
            jax.random.key(0), data
        )
    with pytest.raises(ValueError, match="lora_scale"):
        aj.make_simulation(_model(), aj.product_sum()).init(
            jax.random.key(0), data, lora_scale=jnp.ones(3)
        )
    with pytest.raises(ValueError, match="client_chunk"):
        aj.make_simulation(_model(), aj.product_sum(), client_chunk=0)
    one = np.array(jax.devices()[:1])
    with pytest.raises(ValueError, match="one axis"):
        aj.make_simulation(_model(), aj.product_sum(), mesh=jax.sharding.Mesh(one, ("x",)))
    with pytest.raises(ValueError, match="num_runs"):
        aj.make_simulation(_model(), aj.product_sum(), mesh=jax.sharding.Mesh(one, ("runs",)))
    with pytest.raises(ValueError, match="test"):
        sim = aj.make_simulation(_model(), aj.product_sum())
        aj.run(sim, data, (data.x[0, :, :2], data.y[0]), rounds=1, key=jax.random.key(0))


@pytest.mark.parametrize("donate", [False, True])
def test_scanned_rounds_equal_repeated_rounds(rng, clients_fn, donate):
    data = clients_fn(rng, [6, 4, 5, 7], FEAT, CLASSES)
    sim = aj.make_simulation(
        _model(),
        aj.sum_product(),
        batch_size=4,
        sampling=aj.uniform_sampling(3),
        reset_optimizer=False,
        donate_state=donate,
    )
    start = sim.init(jax.random.key(6), data)
    inputs = sim.prepare(start, data)
    copy = lambda state: jax.tree.map(jnp.copy, state)  # noqa: E731 - a donated state is freed
    state, per_round = copy(start), []
    for _ in range(3):
        state, metrics = sim.round(state, data, inputs)
        per_round.append(metrics)
    scanned, stacked = sim.rounds(copy(start), data, inputs, num_rounds=3)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)  # noqa: E731
    jax.tree.map(close, (scanned.frozen, scanned.clients, scanned.opt_state),
                 (state.frozen, state.clients, state.opt_state))  # fmt: skip
    assert int(scanned.round) == 3
    np.testing.assert_array_equal(jax.random.key_data(scanned.key), jax.random.key_data(state.key))
    for name, value in stacked.items():
        assert value.shape[0] == 3, name
        close(value, np.stack([m[name] for m in per_round]))
    with pytest.raises(ValueError, match="num_rounds"):
        sim.rounds(copy(start), data, inputs, num_rounds=0)


@pytest.mark.parametrize(
    "sampling, chunk, runs",
    [
        (None, 3, None),  # 7 clients in groups 3 + 3 + 1 (+ 2 filler copies)
        (None, 1, None),
        (None, 7, None),  # one group: the plain vmap
        ("uniform", 2, None),  # train_only_sampled: 5 gathered clients in groups of 2
        (None, 4, 2),  # under the runs axis
    ],
)
def test_client_chunk_equals_all_clients_at_once(rng, clients_fn, sampling, chunk, runs):
    # Groups change only how the per-client work is batched, never what a client computes.
    data = clients_fn(rng, [6, 4, 5, 7, 3, 8, 5], FEAT, CLASSES)
    kw = dict(
        batch_size=4,
        local_epochs=2,
        reset_optimizer=False,
        sampling=aj.uniform_sampling(5) if sampling else None,
        num_runs=runs,
        metrics_fn=_record_clients,
    )
    key = jax.random.key(8) if runs is None else jax.random.split(jax.random.key(8), runs)
    states = []
    for c in (None, chunk):
        sim = aj.make_simulation(_model(), aj.sum_product(), client_chunk=c, **kw)
        state = sim.init(key, data)
        state, metrics = sim.rounds(state, data, sim.prepare(state, data), num_rounds=2)
        states.append((state.frozen, state.clients, state.opt_state, metrics))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)  # noqa: E731
    jax.tree.map(close, states[1], states[0])


def test_bytes_count_everything_that_travels_biases_included(rng, clients_fn):
    # paper_mlp(6, (5, 4), 3, ranks=2) in float64: LoRA factors r (d + k) per layer, biases 5+4+3.
    data = clients_fn(rng, [6, 4, 5], FEAT, CLASSES)
    sim = aj.make_simulation(_model(), aj.product_sum(), batch_size=4)
    _, metrics = sim.round(sim.init(jax.random.key(0), data), data)
    factors = 2 * (5 + 6) + 2 * (4 + 5) + 2 * (3 + 4)
    biases = 5 + 4 + 3
    np.testing.assert_array_equal(metrics["abo/bytes_up"], np.full(3, 8.0 * (factors + biases)))
    np.testing.assert_array_equal(metrics["abo/bytes_down"], np.full(3, 8.0 * (factors + biases)))
