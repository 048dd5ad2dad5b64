"""One simulation as one of several processes (``python -m abo_jax.launch``), or alone.

Usage: python multiprocess_subprocess.py CHECKPOINT OUT_PREFIX. Runs to round STOP_AT, stops
(every process), checks the checkpoint process 0 wrote, then resumes from it to ROUNDS. Every
process builds only its own clients
(``client_data_from_shares``), trains them on its devices of the global mesh, records
theory.round_metrics per round, and writes its history to ``OUT_PREFIX<process>.npz``; process 0
writes the checkpoint. float64 and strict rank promotion, as the test process (tests/conftest.py).
"""

import functools
import os
import sys

from abo_jax.distributed import distributed_from_env

distributed_from_env()  # before JAX starts: the launcher's variables, or nothing

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_helpers import synthetic_clients  # noqa: E402

import abo_jax as aj  # noqa: E402
from abo_jax.distributed import client_data_from_shares, process_clients  # noqa: E402
from abo_jax.simulation.checkpoint import read_checkpoint_header  # noqa: E402
from theory import round_metrics  # noqa: E402

ROUNDS, STOP_AT, CLIENTS = 4, 2, 4


def problem():
    """The whole problem (every process can make it; each keeps only its share on devices)."""
    data = synthetic_clients(np.random.default_rng(0), [6, 9, 4, 7], 6, 3)
    test = (np.asarray(data.x[1]), np.asarray(data.y[1]))
    return jax.tree.map(np.asarray, data), test


def simulation(mesh):
    model = aj.paper_mlp(6, (5, 4), 3, ranks=2, dtype=jnp.float64)
    return aj.make_simulation(
        model, aj.sum_product(), batch_size=4, metrics_fn=round_metrics, mesh=mesh
    )


class Stop(Exception):
    pass


def main(checkpoint, out_prefix):
    mesh = Mesh(np.array(jax.devices()), ("clients",))
    whole, test = problem()
    share = process_clients(CLIENTS, mesh)
    local = jax.tree.map(lambda x: x[share], whole)
    data = client_data_from_shares(local, mesh, num_clients=CLIENTS)
    held = sum(s.data.shape[0] for s in data.x.addressable_shards)
    assert held == CLIENTS // jax.process_count(), (held, share)
    sim = simulation(mesh)

    def stop(r, state, record):
        if r == STOP_AT:
            raise Stop

    run = functools.partial(
        aj.run, sim, data, test, rounds=ROUNDS, key=jax.random.key(5), progress=False,
        checkpoint_path=checkpoint, checkpoint_every=1,
    )  # fmt: skip
    try:
        run(callback=stop)
        raise AssertionError("not stopped")
    except Stop:  # every process stops after round STOP_AT, once process 0 wrote its checkpoint
        assert read_checkpoint_header(checkpoint)["round"] == STOP_AT
    hist, _ = run()  # every process resumes from that file
    np.savez(f"{out_prefix}{jax.process_index()}.npz", **hist)


if __name__ == "__main__":
    main(*sys.argv[1:])
