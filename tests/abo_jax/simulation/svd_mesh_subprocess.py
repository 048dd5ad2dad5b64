"""SP with theory's metrics on a 2-CPU-device mesh vs one device, in a fresh float32 process.

The digits cell of the paper experiment (10 clients, one class each, 3 seeds on the run axis, the
paper MLP at delta = 0.07) hung on a 2-device mesh when ``abo_jax.linalg.svd`` used
``jax.pure_callback``: its operand copy waited behind the blocked device (abo_jax/linalg.py). The
buffer callback must run it. Usage: python svd_mesh_subprocess.py OUT.npz
"""

import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import abo_jax as aj  # noqa: E402
from abo_jax.data import load_digits, one_class_per_client, pad_clients  # noqa: E402
from theory import round_metrics  # noqa: E402


def main(out):
    ds = load_digits(flatten=True)
    data = pad_clients(ds.x_train, ds.y_train, one_class_per_client(ds.y_train, num_clients=10))
    model = aj.paper_mlp(data.x.shape[-1], (200, 200), 10, ranks=(11, 11, 7))
    keys = jax.random.split(jax.random.key(0), 3)
    results = {}
    for name, mesh in (("one", None), ("two", Mesh(np.array(jax.devices()), ("clients",)))):
        sim = aj.make_simulation(
            model, aj.sum_product(), batch_size=8, metrics_fn=round_metrics, num_runs=3, mesh=mesh
        )
        hist, _ = aj.run(sim, data, (ds.x_test, ds.y_test), rounds=2, key=keys, progress=False)
        results.update({f"{name}/{k}": np.asarray(v) for k, v in hist.items()})
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
