"""Jobs run in a fresh process by the fault-injection tests (killed with SIGKILL mid-way).

Usage: python fault_job.py chunks CKPT  |  python fault_job.py writes CKPT  |  python fault_job.py
json FILE
"""

import os
import signal
import sys

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import abo_jax as aj  # noqa: E402
from abo_jax.data.client_data import ClientData  # noqa: E402

ROUNDS, CHUNK, KILL_AFTER = 6, 2, 4
LONG = 40  # rounds of the run killed from outside at a random time


def problem():
    rng = np.random.default_rng(0)
    sizes = np.array([6, 9, 4, 7])
    x = rng.normal(size=(4, 9, 6))
    y = rng.integers(0, 3, size=(4, 9)).astype(np.int32)
    mask = np.arange(9)[None, :] < sizes[:, None]
    x, y = np.where(mask[..., None], x, 0.0), np.where(mask, y, 0)
    data = ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(sizes))
    return data, (data.x[1], data.y[1])


def sim(op="sum_product"):
    model = aj.paper_mlp(6, (5, 4), 3, ranks=2, dtype=jnp.float64)
    return aj.make_simulation(model, getattr(aj, op)(), batch_size=4)


def chunks(path):
    from experiments.paper.run import train_in_chunks

    data, test = problem()

    def die(done):
        if done == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)

    train_in_chunks(sim(), data, test, rounds=ROUNDS, key=jax.random.key(5), chunk=CHUNK,
                    checkpoint_path=path, callback=die)  # fmt: skip
    raise SystemExit("not killed")


def chunks_long(path):
    from experiments.paper.run import train_in_chunks

    data, test = problem()
    train_in_chunks(sim(), data, test, rounds=LONG, key=jax.random.key(5), chunk=CHUNK,
                    checkpoint_path=path)  # fmt: skip
    print("finished", flush=True)


def big_state(i):
    return {"w": np.full((1 << 21,), float(i)), "key": jax.random.key(i)}  # 16 MiB


def writes(path):
    for i in range(1, 10_000):
        aj.simulation.save_checkpoint(path, big_state(i), history=[{"round": r} for r in range(1, i + 1)],
                           overwrite=True)  # fmt: skip
        print(i, flush=True)


def json_writes(path):
    from experiments.common.io import atomic_write_json

    for i in range(1, 10_000):
        atomic_write_json(path, {"i": i, "values": list(range(200_000))})
        print(i, flush=True)


if __name__ == "__main__":
    modes = {"chunks": chunks, "long": chunks_long, "writes": writes, "json": json_writes}
    modes[sys.argv[1]](sys.argv[2])
