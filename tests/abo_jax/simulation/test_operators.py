"""Every kind of operator runs in the same jitted round: frozen factors, base corrections,
personalized factors, heterogeneous ranks."""

import jax
import jax.numpy as jnp
import numpy as np

import abo_jax as aj

FEAT, CLASSES, SIZES = 6, 3, [5, 7, 6]


def _capture(clients, weights, broadcast):
    return {"clients": clients, "weights": weights}


def _two_rounds(abo, clients_fn, rng, **kw):
    data = clients_fn(rng, SIZES, FEAT, CLASSES)
    model = aj.paper_mlp(FEAT, (5, 4), CLASSES, ranks=3, dtype=jnp.float64)
    init_kw = {k: kw.pop(k) for k in ("lora_scale",) if k in kw}
    sim = aj.make_simulation(model, abo, batch_size=4, metrics_fn=_capture, **kw)
    s0 = sim.init(jax.random.key(0), data, **init_kw)
    s1, m1 = sim.round(s0, data, sim.prepare(s0, data))
    s2, m2 = sim.round(s1, data, sim.prepare(s1, data))
    return sim, data, (s0, s1, s2), (m1, m2)


def test_ffa_keeps_a_frozen(rng, clients_fn):
    _, _, (s0, _, s2), (m1, _) = _two_rounds(aj.ffa(), clients_fn, rng)
    for name, f in s2.clients.lora.items():
        np.testing.assert_array_equal(f.a, s0.clients.lora[name].a)
        shared = s0.clients.lora[name].a  # FFA-LoRA is global: one start for every client
        trained_a = m1["clients"][name].a
        np.testing.assert_array_equal(trained_a, np.broadcast_to(shared, trained_a.shape))
        assert not np.allclose(f.b, 0.0)


def test_rolora_alternates_b_then_a(rng, clients_fn):
    _, _, (s0, s1, s2), _ = _two_rounds(aj.rolora(), clients_fn, rng)
    for name in s0.clients.lora:
        f0, f1, f2 = (s.clients.lora[name] for s in (s0, s1, s2))
        np.testing.assert_array_equal(f1.a, f0.a)  # round 1 trains B only
        assert not np.allclose(f1.b, f0.b)
        np.testing.assert_array_equal(f2.b, f1.b)  # round 2 trains A only
        assert np.any(f2.a != f1.a)  # small: B is still small after one round


def test_fedex_model_equals_fedavg_of_merged_weights(rng, clients_fn):
    _, _, (s0, s1, _), (m1, _) = _two_rounds(aj.fedex(), clients_fn, rng)
    w = np.asarray(m1["weights"])
    for name, f in m1["clients"].items():
        merged = s0.frozen[name] + np.einsum("c,cdr,crk->dk", w, f.b, f.a)
        p = s1.clients.lora[name]
        np.testing.assert_allclose(s1.frozen[name] + p.b @ p.a, merged, rtol=1e-10, atol=1e-13)


def test_fedsa_keeps_personal_b_and_evaluates_per_client(rng, clients_fn):
    sim, data, (_, s1, _), (m1, _) = _two_rounds(
        aj.fedsa(), clients_fn, rng, eval_mode="personalized"
    )
    for name, f in s1.clients.lora.items():
        np.testing.assert_array_equal(f.b, m1["clients"][name].b)  # personal B
        assert not np.allclose(f.b[0], f.b[1])
        np.testing.assert_allclose(f.a[0], f.a[2], rtol=1e-15)  # shared A
    ev = sim.evaluate(s1, data.x[0], data.y[0])
    assert 0.0 <= float(ev["accuracy"]) <= 1.0 and np.isfinite(ev["loss"])


def test_hetlora_with_alpha_over_r(rng, clients_fn):
    # rbla and flexlora share HetLoRA's signature; one compile here keeps the suite fast.
    ranks = np.array([1, 2, 3])
    _, _, (_, s1, s2), _ = _two_rounds(
        aj.hetlora(ranks, alpha=3.0), clients_fn, rng, client_ranks=ranks, lora_scale=3.0 / ranks
    )
    for f in s2.clients.lora.values():
        np.testing.assert_array_equal(f.a[0, 1:], 0.0)  # client 0 stays at rank 1
        np.testing.assert_array_equal(f.b[1, :, 2:], 0.0)
        assert np.all(np.isfinite(f.b)) and np.any(f.b[2, :, 2] != 0)
