"""Benchmark 6: the same round sharded over 1, 2, 4, 8 (forced) CPU devices.

Each device count runs in its own subprocess, because ``XLA_FLAGS=
--xla_force_host_platform_device_count=N`` must be set before JAX initializes. In each, the client
axis of the data, keys and weights is sharded over a 1-D ``Mesh`` named ``clients`` (the frozen base
and the global factors are replicated) and the jitted round runs; the parent checks that every
device count gives the same global factors as one device and reports the time per round and the
scaling ``t(1) / t(N)``. Forced host devices share the machine's cores, so the scaling is bounded by
the number of cores (``nproc``), not by N.

Run: ``python -m experiments.bench.sharding [--quick] [--out DIR]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from experiments.bench import common
from experiments.bench import workload as W

NAME = "sharding"
TITLE = "Round sharded over forced CPU devices"


@dataclass(frozen=True)
class Config:
    devices: tuple[int, ...] = (1, 2, 4, 8)
    spec: W.RoundSpec = dataclasses.replace(W.SMALL_CLIENTS, clients=1000)
    reps: int = 5
    # "same numbers": max |x_N - x_1| / max |x_1| per leaf; float32 sums over m clients in another
    # order (per-device partial sums) differ by ~1e-5 relative at m = 1000.
    rtol: float = 1e-4
    seed: int = 0
    timeout_s: float = 600.0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = dataclasses.replace(W.TINY, clients=8)
        return Config(devices=(1, 2), spec=spec, reps=2, timeout_s=300.0)
    return Config()


def worker(n_devices: int, spec: W.RoundSpec, reps: int, seed: int, out_dir: Path) -> dict:
    """Runs in the subprocess: shard, compile, time, save the result."""
    fingerprint = common.code_fingerprint()  # the code this worker imported as it started
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from experiments.bench import rounds as R

    devices = jax.devices()
    if len(devices) != n_devices:
        raise RuntimeError(f"expected {n_devices} devices, JAX sees {len(devices)}")
    if spec.clients % n_devices:
        raise ValueError(f"m = {spec.clients} must be divisible by {n_devices} devices")
    mesh = Mesh(np.array(devices), ("clients",))
    problem = W.make_problem(spec, seed)
    if R.sim_available():
        impl = "sim"
        *_, sim, state, data, inputs = R.sim_setup(spec, problem, mesh=mesh, seed=seed)
        args = (state, data, inputs)
        fn = sim.round
        x_sharding = str(data.x.sharding)
        global_of = lambda out: jax.tree.map(lambda v: v[0], out[0].clients)
    else:  # the bench's own round: shard the client axis of its inputs by hand
        impl = "bench"
        by_client = NamedSharding(mesh, PartitionSpec("clients"))
        replicated = NamedSharding(mesh, PartitionSpec())
        placed = problem._replace(
            trainable=jax.device_put(problem.trainable, replicated),
            base=jax.device_put(problem.base, replicated),
            x=jax.device_put(problem.x, by_client),
            y=jax.device_put(problem.y, by_client),
            weights=jax.device_put(problem.weights, by_client),
            keys=jax.device_put(problem.keys, by_client),
        )
        args = (placed,)
        fn = jax.jit(partial(W.vmapped_round, spec))
        x_sharding = str(placed.x.sharding)
        global_of = lambda out: out[0]
    compiled, compile_s = common.compile_timed(fn, *args)
    t = common.time_interleaved({"round": lambda: compiled(*args)}, reps=reps, warmup=1)
    result = global_of(compiled(*args))
    leaves = [np.asarray(v) for v in jax.tree.leaves(result)]
    np.savez(out_dir / f"result_{n_devices}.npz", *leaves)
    return {
        "devices": n_devices,
        "round_s": t["round"].median_s,
        "times_s": t["round"].times_s,
        "compile_s": compile_s,
        "x_sharding": x_sharding,
        "round_impl": impl,
        "env": common.env_info(),
        "code_fingerprint": fingerprint,
    }


def spawn(n_devices: int, config: Config, out_dir: Path) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    payload = json.dumps(
        {
            "devices": n_devices,
            "spec": dataclasses.asdict(config.spec),
            "reps": config.reps,
            "seed": config.seed,
            "out_dir": str(out_dir),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench.sharding", "--worker", payload],
        env=env,
        capture_output=True,
        text=True,
        timeout=config.timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker with {n_devices} devices failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(config: Config, reps: int | None = None) -> dict:
    if reps is not None:
        config = dataclasses.replace(config, reps=reps)
    rows = []
    fingerprint = common.code_fingerprint()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        for n in config.devices:
            print(f"  sharding: {n} device(s) ...", file=sys.stderr, flush=True)
            rows.append(spawn(n, config, out_dir))
        # Each device count runs in its own process, importing the code as it is then. One
        # earlier run compared workers that ran different library code (the working tree was
        # edited between them; the MLP's init had changed) and reported a difference of 2.0.
        changed = {r["devices"]: r["code_fingerprint"] for r in rows}
        if set(changed.values()) != {fingerprint}:
            raise RuntimeError(
                f"the code changed during the run (fingerprint {fingerprint} at the start, per"
                f" device count {changed}): the results are not comparable, run again"
            )
        ref = np.load(out_dir / f"result_{config.devices[0]}.npz")
        ref_leaves = [ref[k] for k in ref.files]
        for row in rows:
            got = np.load(out_dir / f"result_{row['devices']}.npz")
            errs = [
                float(np.max(np.abs(got[k] - r)) / max(float(np.max(np.abs(r))), 1e-30))
                for k, r in zip(got.files, ref_leaves, strict=True)
            ]
            row["rel_diff_per_leaf_vs_1"] = errs
            row["max_rel_diff_vs_1"] = max(errs)
            row["same_numbers"] = row["max_rel_diff_vs_1"] <= config.rtol
    t1 = rows[0]["round_s"]
    for row in rows:
        row["scaling"] = t1 / row["round_s"]
    targets = {"same_numbers_on_every_device_count": all(r["same_numbers"] for r in rows)}
    return {
        "rows": rows,
        "targets": targets,
        "round_impl": rows[0]["round_impl"],
        "code_fingerprint": fingerprint,
    }


COLUMNS = [
    ("devices", "devices", None),
    ("round_s", "round [s]", ".3g"),
    ("scaling", "t(1)/t(N)", ".2f"),
    ("compile_s", "compile [s]", ".2f"),
    ("max_rel_diff_vs_1", "max rel diff vs 1", ".1e"),
    ("same_numbers", "same", None),
]


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        payload = json.loads(argv[1])
        spec = W.RoundSpec(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()}
        )
        row = worker(
            payload["devices"], spec, payload["reps"], payload["seed"], Path(payload["out_dir"])
        )
        print(json.dumps(common.to_jsonable(row)))
        return None
    # The figures were measured in the workers: their environment is the one to record.
    return common.bench_main(argv, sys.modules[__name__], env_of=lambda res: res["rows"][0]["env"])


def notes(config: Config, result: dict, env: dict) -> list[str]:
    return [
        "client axis sharded over a 1-D Mesh('clients'); one subprocess per device count"
        f" (XLA_FLAGS=--xla_force_host_platform_device_count=N); nproc = {env['nproc']} bounds"
        " the scaling.",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
