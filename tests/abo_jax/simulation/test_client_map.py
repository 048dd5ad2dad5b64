"""auto_clients: the group size from the shapes (closed form), and the form it picks (vmap or groups)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import abo_jax as aj
from abo_jax.simulation.client import ClientUpdate
from abo_jax.simulation.client_map import auto_clients, client_group_size


def _train(params: int, state: int):
    def train(x):
        return ClientUpdate(jnp.zeros((params,)), jnp.zeros((state,)), x.sum(), jnp.int32(1))

    return train


@pytest.mark.parametrize(
    "params, state, budget, m",
    [(1000, 1000, 16_000, 50), (1000, 0, 10**9, 7), (10**6, 10**6, 10, 3), (250, 250, 4000, 2)],
)
def test_group_size_is_budget_over_working_set(params, state, budget, m):
    # float32: 3 copies of the parameters (values, gradient, update) and the optimizer state.
    want = min(m, max(1, budget // (4 * (3 * params + state))))
    got = client_group_size(_train(params, state), (jnp.ones((m, 3)),), cache_bytes=budget)
    assert got == want


def _round(map_clients, m=6):
    model = aj.paper_mlp(8, (6,), 3, mode="full")
    rnd = aj.federated_round(
        model,
        aj.fedavg_full(),
        optimizer=optax.sgd(0.1, momentum=0.9),
        batch_size=4,
        map_clients=map_clients,
    )
    kx, ky = jax.random.split(jax.random.key(0))
    data = aj.ClientData(
        x=jax.random.normal(kx, (m, 10, 8)),
        y=jax.random.randint(ky, (m, 10), 0, 3),
        mask=jnp.arange(10)[None, :] < jnp.array([10, 7, 10, 3, 10, 9])[:, None],
        sizes=jnp.array([10, 7, 10, 3, 10, 9], jnp.int32),
    )
    state = rnd.init(jax.random.key(1), data)
    return jax.jit(rnd.apply)(state, data)[0].clients


def test_auto_clients_is_vmap_when_the_clients_fit_and_groups_when_not():
    vmapped = _round(aj.simulation.vmap_clients)
    fits = _round(auto_clients(cache_bytes=2**30))
    for a, b in zip(jax.tree.leaves(fits), jax.tree.leaves(vmapped), strict=True):
        np.testing.assert_array_equal(a, b)  # the same program: vmap over every client
    # 8*6 + 6 + 6*3 + 3 = 75 float32 parameters, momentum as many: 1200 bytes per client.
    in_pairs = _round(auto_clients(cache_bytes=2400))
    pairs = _round(aj.client_groups(2))
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (in_pairs, pairs, vmapped)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_auto_clients_refuses_a_non_positive_budget():
    with pytest.raises(ValueError, match="cache_bytes must be positive"):
        auto_clients(cache_bytes=0)
