"""Benchmark 10: one round on 1 process x 2 devices against 2 processes x 1 device.

The same round (``federated_round`` + ``on_mesh`` over every device of the run + ``jit_round``)
on two layouts of two CPU devices: one process with two devices (collectives inside XLA) and two
processes of JAX's distributed runtime with one device each (``python -m abo_jax.launch``, gloo
collectives over loopback). Each process builds only its own clients
(``abo_jax.distributed.client_data_from_shares``; client ``i``'s data is drawn from its own seed,
so both layouts train the same clients) and the global model after the timed rounds must agree.
Layouts alternate, ``passes`` times each, and the table gives the median round time and the ratio
``t(2 processes) / t(1 process)`` per workload: the paper round (10 clients of 6016 MNIST-sized
examples) and 1000 digits-sized clients.

Memory: the peak resident memory of every process (``ru_maxrss``) and XLA's planned bytes per
device for a round of ``m`` digits-sized clients on 1 process x 1 device and on 2 processes x 1
device, at two values of ``m``; the slope gives the bytes each client costs per process and, for
a memory budget per process, the largest ``m`` that fits (extrapolated, not run to failure).

``python -m experiments.bench.multiprocess [--quick] [--passes N] [--reps N] [--parts P]
[--out DIR]``;
pause other work on the machine while it runs (RESULTS.md, 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.bench import common
from experiments.bench import workload as W

NAME = "multiprocess"
TITLE = "One round on 1 process x 2 devices vs 2 processes x 1 device"
LAYOUTS = {"1 process x 2 devices": (1, 2), "2 processes x 1 device": (2, 1)}
MEMORY_LAYOUTS = {"1 process x 1 device": (1, 1), "2 processes x 1 device": (2, 1)}


@dataclass(frozen=True)
class Config:
    workloads: tuple[tuple[str, W.RoundSpec], ...] = (
        ("paper round, m = 10", dataclasses.replace(W.RoundSpec(), clients=10)),
        ("digits-sized, m = 1000", dataclasses.replace(W.SMALL_CLIENTS, clients=1000)),
    )
    memory_clients: tuple[int, ...] = (10000, 20000)
    memory_spec: W.RoundSpec = W.SMALL_CLIENTS
    budget_gib: float = 8.0  # memory per process the largest-m figure is extrapolated to
    passes: int = 2  # each layout launched this many times, alternating
    reps: int = 5  # timed rounds per launch (after one compile-and-run)
    rtol: float = 1e-4  # same global model on both layouts (float32 order)
    timeout_s: float = 900.0


def get_config(quick: bool = False) -> Config:
    if quick:
        tiny = dataclasses.replace(W.TINY, clients=8)
        return Config(
            workloads=(("tiny, m = 8", tiny),),
            memory_clients=(8, 16),
            memory_spec=W.TINY,
            passes=1,
            reps=2,
        )
    return Config()


# --------------------------------------------------------------------------- in every process


def _local_data(spec: W.RoundSpec, share: slice):
    """The clients of ``share``, client ``i`` drawn from seed ``i`` (the same on every layout)."""
    import abo_jax

    xs, ys = [], []
    for i in range(share.start, share.stop):
        rng = np.random.default_rng(i)
        xs.append(rng.standard_normal((spec.samples, spec.sizes[0]), np.float32))
        ys.append(rng.integers(0, spec.sizes[-1], spec.samples).astype(np.int32))
    m = share.stop - share.start
    return abo_jax.ClientData(
        x=np.stack(xs),
        y=np.stack(ys),
        mask=np.ones((m, spec.samples), bool),
        sizes=np.full((m,), spec.samples, np.int32),
    )


def worker(payload: dict) -> dict | None:
    """One process of a layout: builds its clients, times ``reps`` rounds; process 0 reports."""
    from abo_jax.distributed import distributed_from_env

    distributed_from_env()  # before JAX starts
    import jax
    from jax.sharding import Mesh

    import abo_jax
    from abo_jax.distributed import client_data_from_shares, fetch, is_primary, process_clients

    spec = W.RoundSpec(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()}
    )
    mesh = Mesh(np.array(jax.devices()), ("clients",))
    share = process_clients(spec.clients, mesh)
    data = client_data_from_shares(
        _local_data(spec, share),
        mesh,
        num_clients=spec.clients,
        sizes=np.full((spec.clients,), spec.samples, np.int32),
    )
    rnd = abo_jax.federated_round(
        W.model_of(spec),
        abo_jax.product_sum(),
        optimizer=W.optimizer_of(spec),
        local_epochs=spec.epochs,
        batch_size=spec.batch,
        map_clients=abo_jax.simulation.vmap_clients,  # every device's share at once, as bench 6
    )
    rnd = abo_jax.on_mesh(rnd, mesh)
    state = rnd.shard(rnd.init(jax.random.key(0), data), "state")
    inputs = rnd.shard(rnd.prepare(state, data), "inputs")
    jitted = abo_jax.jit_round(rnd)
    t0 = time.perf_counter()
    compiled = jitted.apply.lower(state, data, inputs).compile()
    compile_s = time.perf_counter() - t0
    planned = compiled.memory_analysis()
    out = None
    times = []
    for _ in range(int(payload["reps"]) + 1):  # the first run is not timed
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(state, data, inputs))
        times.append(time.perf_counter() - t0)
    model = fetch(out[0].clients)  # a collective: every process
    # KiB (as ru_maxrss gives it): int32 across processes (JAX without x64) holds up to 2 TiB
    rss_kib = np.asarray(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, np.int32)
    from jax.experimental import multihost_utils

    every_rss = np.asarray(multihost_utils.process_allgather(rss_kib), np.int64).reshape(-1) * 1024
    if not is_primary():
        return None
    if payload.get("model_out"):
        np.savez(payload["model_out"], *jax.tree.leaves(model))
    return {
        "round_s": float(np.median(times[1:])) if len(times) > 1 else float("nan"),
        "times_s": times[1:],
        "compile_s": compile_s,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "clients_per_process": share.stop - share.start,
        "peak_rss_bytes": every_rss.tolist(),
        "planned_bytes_per_device": {
            "arguments": int(planned.argument_size_in_bytes),
            "outputs": int(planned.output_size_in_bytes),
            "temporaries": int(planned.temp_size_in_bytes),
        },
        "x_sharding": str(data.x.sharding),
    }


# ------------------------------------------------------------------------------------- parent


def _launch(layout: tuple[int, int], payload: dict, timeout_s: float) -> dict:
    processes, devices = layout
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result_path = f.name
    payload = {**payload, "result": result_path}
    code = "import json, sys; from experiments.bench import multiprocess as B; B._worker_main()"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(common.ROOT)}
    command = [sys.executable, "-m", "abo_jax.launch", "--processes", str(processes)]
    command += ["--devices-per-process", str(devices), "--timeout", str(int(timeout_s))]
    command += ["--", sys.executable, "-c", code, json.dumps(payload)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=common.ROOT)
    try:
        if proc.returncode != 0:
            raise RuntimeError(
                f"layout {processes} x {devices} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        return json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)


def _worker_main() -> None:
    payload = json.loads(sys.argv[1])
    result = worker(payload)
    if result is not None:
        Path(payload["result"]).write_text(json.dumps(common.to_jsonable(result)))


def run(
    config: Config,
    reps: int | None = None,
    passes: int | None = None,
    parts: tuple[str, ...] = ("time", "memory"),
) -> dict:
    reps, passes = reps or config.reps, passes or config.passes
    rows, memory = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in config.workloads if "time" in parts else ():
            seen: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
            for p in range(passes):
                for layout, shape in LAYOUTS.items():
                    print(f"  {NAME}: {name}, {layout} (pass {p + 1})", file=sys.stderr, flush=True)
                    model_out = str(Path(tmp) / f"{shape[0]}x{shape[1]}.npz")
                    payload = {"spec": dataclasses.asdict(spec), "reps": reps}
                    payload["model_out"] = model_out
                    seen[layout].append(_launch(shape, payload, config.timeout_s))
            models = {
                layout: np.load(Path(tmp) / f"{shape[0]}x{shape[1]}.npz")
                for layout, shape in LAYOUTS.items()
            }
            a, b = models.values()
            diff = max(
                float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(a[k]))), 1e-30))
                for k in a.files
            )
            medians = {
                layout: float(np.median([t for r in runs for t in r["times_s"]]))
                for layout, runs in seen.items()
            }
            one, two = medians.values()
            rows.append(
                {
                    "workload": name,
                    "one_process_s": one,
                    "two_processes_s": two,
                    "ratio": two / one,
                    "max_rel_diff": diff,
                    "same_numbers": diff <= config.rtol,
                    "compile_s": {k: [r["compile_s"] for r in v] for k, v in seen.items()},
                    "runs": seen,
                }
            )
        for m in config.memory_clients if "memory" in parts else ():
            spec = dataclasses.replace(config.memory_spec, clients=m)
            for layout, shape in MEMORY_LAYOUTS.items():
                print(f"  {NAME}: memory, m = {m}, {layout}", file=sys.stderr, flush=True)
                payload = {"spec": dataclasses.asdict(spec), "reps": 1}
                r = _launch(shape, payload, config.timeout_s)
                planned = r["planned_bytes_per_device"]
                memory.append(
                    {
                        "clients": m,
                        "layout": layout,
                        "clients_per_process": r["clients_per_process"],
                        "peak_rss_mib": max(r["peak_rss_bytes"]) / 2**20,
                        "planned_mib": sum(planned.values()) / 2**20,
                    }
                )
    fits = {}
    lo, hi = min(config.memory_clients), max(config.memory_clients)
    for layout in MEMORY_LAYOUTS if memory else ():
        at = {r["clients"]: r for r in memory if r["layout"] == layout}
        slope = (at[hi]["peak_rss_mib"] - at[lo]["peak_rss_mib"]) / (hi - lo)  # MiB per client
        base = at[lo]["peak_rss_mib"] - slope * lo
        budget = config.budget_gib * 1024
        fits[layout] = {
            "rss_kib_per_client": slope * 1024,
            "fixed_mib": base,
            "largest_m_in_budget": int((budget - base) / slope) if slope > 0 else None,
        }
    return {
        "rows": rows,
        "memory": memory,
        "fits": fits,
        "budget_gib_per_process": config.budget_gib,
        "passes": passes,
        "reps": reps,
        "env": common.env_info(),
    }


COLUMNS = [
    ("workload", "workload", None),
    ("one_process_s", "1 process x 2 devices [s]", ".4g"),
    ("two_processes_s", "2 processes x 1 device [s]", ".4g"),
    ("ratio", "t(2 proc) / t(1 proc)", ".2f"),
    ("max_rel_diff", "max rel diff", ".1e"),
    ("same_numbers", "same", None),
]
MEMORY_COLUMNS = [
    ("clients", "m", None),
    ("layout", "layout", None),
    ("clients_per_process", "clients per process", None),
    ("peak_rss_mib", "peak RSS per process [MiB]", ".1f"),
    ("planned_mib", "XLA planned per device [MiB]", ".1f"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.multiprocess", description=TITLE)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    p.add_argument("--passes", type=int, default=None, help="launches per layout (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per launch (default 5)")
    p.add_argument(
        "--out", type=Path, default=common.DEFAULT_OUT, help="folder for multiprocess.json"
    )
    p.add_argument(
        "--parts",
        default="time,memory",
        help="what to measure, comma-separated: time (the two layouts' rounds), memory",
    )
    args = p.parse_args(argv)
    parts = tuple(x for x in args.parts.split(",") if x)
    if not parts or set(parts) - {"time", "memory"}:
        p.error(f"--parts: expected names in time, memory, got {args.parts!r}")
    for option in ("passes", "reps"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            p.error(f"--{option}: must be at least 1")
    result = run(get_config(args.quick), reps=args.reps, passes=args.passes, parts=parts)
    if result["rows"]:
        print(common.format_table(result["rows"], COLUMNS))
    if result["memory"]:
        print(common.format_table(result["memory"], MEMORY_COLUMNS))
    for layout, fit in result["fits"].items():
        print(
            f"{layout}: {fit['rss_kib_per_client']:.1f} KiB per client per process, "
            f"{fit['fixed_mib']:.0f} MiB fixed; largest m in {result['budget_gib_per_process']:g} "
            f"GiB per process: {fit['largest_m_in_budget']}"
        )
    suffix = "" if set(parts) == {"time", "memory"} else "_" + "_".join(parts)
    path = common.write_json(args.out / f"{NAME}{suffix}.json", result)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
