"""Benchmark 11: a million digits-sized clients in one round; peak memory per client and s/round.

Each layout runs in a fresh process (its peak resident memory, ``VmHWM``, is the process's own):
digits-sized clients (64 features: scikit-learn's 8x8 digits drawn with replacement, 20 examples,
the MLP 64-200-200-10 with LoRA rank 8, PS, SGD with momentum, one local epoch, batch 10), the
data built on the device (no host copy). Layouts, all through the round's arguments:

* ``old``: the layout before aggregation over groups, ``client_groups(100)``, the per-example cache
  precomputed for every client, the state donated: the round holds every client's trained factors
  and cache at once;
* ``streamed``: ``streamed_groups(1000)``, ``precompute=False``, donated: one group's trained
  factors and cache at a time, added to PS's sums as the group finishes.

The table gives seconds per round (the median of the timed rounds after a first round that
compiles), the process's peak resident memory from the clients' creation on (init, prepare and the
rounds; the gather that builds the data peaks at about twice the data and is reported apart), and
per client that peak less the resident memory of the started runtime (Python, JAX, XLA: about
0.3 GB, paid by every layout), divided by the clients;
the data alone is ``20 x (64 x 4 + 4 + 1) = 5,220`` bytes per client. The layouts run one after
another (a process each), so their times are not interleaved: read the speed column as +-20%.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

from experiments.bench import common

NAME = "million"
TITLE = "A million clients: peak memory per client and seconds per round"


@dataclass(frozen=True)
class Config:
    runs: tuple[tuple[str, int], ...] = (
        ("old", 100_000),
        ("streamed", 100_000),
        ("streamed", 1_000_000),
    )
    samples: int = 20
    hidden: tuple[int, ...] = (200, 200)
    rank: int = 8
    batch: int = 10
    old_group: int = 100
    streamed_group: int = 1000
    rounds: int = 3  # the first compiles; the others are timed
    seed: int = 0
    timeout_s: float = 3600.0


def get_config(quick: bool = False) -> Config:
    if quick:
        return Config(
            runs=(("old", 64), ("streamed", 64)), hidden=(16,), rank=2, old_group=8,
            streamed_group=16, rounds=2, timeout_s=600.0,
        )  # fmt: skip
    return Config()


def _status_bytes(field: str) -> int:
    """``VmHWM`` (peak resident) or ``VmRSS`` (resident now) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def worker(payload: dict) -> dict:
    """In the subprocess: builds the clients on the device and runs the rounds of one layout."""
    import jax
    import jax.numpy as jnp
    from sklearn.datasets import load_digits

    import abo_jax

    layout, m, n = payload["layout"], payload["clients"], payload["samples"]
    jnp.zeros(()).block_until_ready()  # the runtime started: what every layout pays anyway
    runtime = _status_bytes("VmRSS")
    digits = load_digits()
    pixels = jnp.asarray(digits.data / 16.0, jnp.float32)  # (1797, 64)
    labels = jnp.asarray(digits.target, jnp.int32)
    k_idx, k_run = jax.random.split(jax.random.key(payload["seed"]))
    idx = jax.random.randint(k_idx, (m, n), 0, pixels.shape[0])
    data = abo_jax.ClientData(
        x=pixels[idx], y=labels[idx], mask=jnp.ones((m, n), bool), sizes=jnp.full((m,), n)
    )
    del idx
    jax.block_until_ready(data)
    # Building the clients by a gather peaks at about twice the data; the peak reported is the
    # round's: the kernel's high-water mark is reset here (Linux: clear_refs 5).
    data_peak = _status_bytes("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model = abo_jax.paper_mlp(64, payload["hidden"], 10, ranks=payload["rank"])
    if layout == "old":
        groups, precompute = abo_jax.client_groups(payload["old_group"]), True
    else:
        groups, precompute = abo_jax.streamed_groups(payload["streamed_group"]), False
    rnd = abo_jax.federated_round(
        model,
        abo_jax.product_sum(),
        batch_size=payload["batch"],
        map_clients=groups,
        precompute=precompute,
    )
    jitted = abo_jax.jit_round(rnd, donate=True)
    state = jitted.init(k_run, data)  # jitted: no eager (m, ...) copy of the start is made
    inputs = jitted.prepare(state, data)
    times = []
    for _ in range(payload["rounds"]):
        t0 = time.perf_counter()
        state, metrics = jitted.apply(state, data, inputs)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    peak = _status_bytes("VmHWM")
    return {
        "layout": layout,
        "clients": m,
        "first_round_s": times[0],
        "round_s": float(sorted(times[1:])[len(times[1:]) // 2]),
        "times_s": times,
        "peak_rss_bytes": peak,
        "runtime_rss_bytes": runtime,
        "data_build_peak_bytes": data_peak,
        "peak_bytes_per_client": (peak - runtime) / m,
        "train_loss": float(metrics["train_loss"]),
        "env": common.env_info(),
    }


def run(config: Config, reps: int | None = None) -> dict:
    rounds = config.rounds if reps is None else reps + 1
    code = "import json, sys; from experiments.bench import million as B; " + (
        "print(json.dumps(B.common.to_jsonable(B.worker(json.loads(sys.argv[1])))))"
    )
    rows = []
    for layout, m in config.runs:
        print(f"  million: {layout}, m={m:,} ...", file=sys.stderr, flush=True)
        payload = {**asdict(config), "layout": layout, "clients": m, "rounds": rounds}
        payload.pop("runs")
        env = {"JAX_PLATFORMS": "cpu"}
        row = common.run_python(code, json.dumps(payload), env=env, timeout_s=config.timeout_s)
        print(f"  million: {json.dumps(common.to_jsonable(row))}", file=sys.stderr, flush=True)
        rows.append(row)
    old = [r for r in rows if r["layout"] == "old"]
    new = [
        r for r in rows if r["layout"] == "streamed" and old and r["clients"] == old[0]["clients"]
    ]
    for r in rows:
        r["memory_vs_old"] = (
            r["peak_bytes_per_client"] / old[0]["peak_bytes_per_client"] if old else None
        )
        r["speed_vs_old"] = (
            old[0]["round_s"] / r["round_s"] if old and r["clients"] == old[0]["clients"] else None
        )
    biggest = max(r["clients"] for r in rows)
    targets = {
        "largest_round_clients": biggest,
        "streamed_uses_less_memory_at_the_same_m": bool(
            new and new[0]["peak_bytes_per_client"] < old[0]["peak_bytes_per_client"]
        ),
    }
    return {"rows": rows, "targets": targets}


COLUMNS = [
    ("layout", "layout", None),
    ("clients", "clients", ","),
    ("first_round_s", "first round [s]", ".1f"),
    ("round_s", "round [s]", ".2f"),
    ("peak_rss_bytes", "peak RSS [B]", ".3e"),
    ("peak_bytes_per_client", "peak B/client", ",.0f"),
    ("memory_vs_old", "B/client vs old", ".2f"),
    ("speed_vs_old", "speed vs old", ".2f"),
]


def notes(config: Config, result: dict) -> list[str]:
    return [
        "peak RSS: the worker process's VmHWM (data, state, XLA's buffers, the Python runtime);"
        " B/client: (peak - the started runtime's RSS) / clients; each layout in its own process,"
        " one after another.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__], env_of=lambda r: r["rows"][-1]["env"])


if __name__ == "__main__":
    main()
