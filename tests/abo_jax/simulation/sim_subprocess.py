"""Runs a small simulation in a fresh process (for kill-and-resume and forced-device sharding tests).

Usage: python sim_subprocess.py kill CHECKPOINT  |  python sim_subprocess.py shard OUT.npz
"""

import os
import signal
import sys

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_helpers import synthetic_clients  # noqa: E402

import abo_jax as aj  # noqa: E402

ROUNDS, KILL_AT, EVERY = 5, 3, 2


def problem(m=4):
    data = synthetic_clients(np.random.default_rng(0), [6, 9, 4, 7, 5, 8, 3, 6][:m], 6, 3)
    test = (data.x[1], data.y[1])
    return data, test


def kill_sim():
    model = aj.paper_mlp(6, (5, 4), 3, ranks=2, dtype=jnp.float64)
    return aj.make_simulation(
        model,
        aj.sum_product(),
        batch_size=4,
        sampling=aj.uniform_sampling(3),
        reset_optimizer=False,
    )


def kill(path):
    data, test = problem()

    def die(r, state, record):
        if r == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    aj.run(kill_sim(), data, test, rounds=ROUNDS, key=jax.random.key(11), progress=False,
           checkpoint_path=path, checkpoint_every=EVERY, callback=die)  # fmt: skip
    raise SystemExit("not killed")


def shard(out):
    assert jax.device_count() == 8, jax.devices()
    data, test = problem(8)
    model = aj.paper_mlp(6, (5, 4), 3, ranks=2, dtype=jnp.float64)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("clients",))
    two = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("clients",))
    results = {}
    # "chunked": 4 clients per device in groups of 3 (a last group filled with copies).
    for name, m, chunk in (("one", None, None), ("sharded", mesh, None), ("chunked", two, 3)):
        sim = aj.make_simulation(model, aj.sum_product(), batch_size=4, mesh=m, client_chunk=chunk)
        hist, state = aj.run(sim, data, test, rounds=2, key=jax.random.key(3), progress=False)
        if m is not None:
            # SP is global: the one start every client shares is replicated on the mesh's
            # devices (the clients' data and training are split over them).
            b = state.clients.lora["dense_1"].b
            devices = m.devices.size
            assert len(b.sharding.device_set) == devices, b.sharding
            assert b.sharding.is_fully_replicated and b.ndim == 2, b.sharding
        results.update({f"{name}/{k}": v for k, v in hist.items()})
        leaves = jax.tree.leaves((state.frozen, state.clients))
        results.update({f"{name}/state{i}": np.asarray(x) for i, x in enumerate(leaves)})
    # Runs (seeds) split over 4 devices ("runs" axis): the same runs as on one device.
    four = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("runs",))
    keys = jax.random.split(jax.random.key(3), 4)
    for name, m in (("runs_one", None), ("runs_four", four)):
        sim = aj.make_simulation(model, aj.sum_product(), batch_size=4, num_runs=4, mesh=m)
        hist, state = aj.run(sim, data, test, rounds=2, key=keys, progress=False)
        if m is not None:
            b = state.clients.lora["dense_1"].b
            assert len(b.sharding.device_set) == 4 and b.addressable_shards[0].data.shape[0] == 1
        results.update({f"{name}/{k}": v for k, v in hist.items()})
        leaves = jax.tree.leaves((state.frozen, state.clients))
        results.update({f"{name}/state{i}": np.asarray(x) for i, x in enumerate(leaves)})
    np.savez(out, **results)


if __name__ == "__main__":
    {"kill": kill, "shard": shard}[sys.argv[1]](sys.argv[2])
