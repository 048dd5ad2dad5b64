"""Benchmark 6: the same round sharded over 1, 2, 4, 8 (forced) CPU devices.

Each device count runs in its own process (``jax_num_cpu_devices`` must be set before JAX starts),
where the round runs on a ``("clients",)`` mesh of all its devices (``workload.setup(devices=N)``:
``on_mesh``); the parent checks that every device count gives the global model of one device and
reports the time per round and ``t(1) / t(N)``. Forced host devices share the machine's cores, so
the scaling is bounded by ``nproc``. Every worker records a fingerprint of the code it imported;
results of different code are refused (RESULTS.md, 6: the working tree changed during a run once).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
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
        return Config(devices=(1, 2), spec=dataclasses.replace(W.TINY, clients=8), reps=2)
    return Config()


def worker(payload: dict) -> dict:
    """In the subprocess: the round on all ``payload["devices"]`` devices, timed; result saved."""
    fingerprint = common.code_fingerprint()  # the code this process imported as it started
    n = payload["devices"]
    common.use_host_devices(n)
    spec = W.RoundSpec(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()}
    )
    s = W.setup(spec, seed=payload["seed"], devices=n)
    thunk, compiled, compile_s = s.compiled()
    t = common.time_interleaved({"round": thunk}, reps=payload["reps"])
    leaves = [np.asarray(v) for v in jax.tree.leaves(s.global_model(thunk()[0]))]
    np.savez(Path(payload["out_dir"]) / f"result_{n}.npz", *leaves)
    return {
        "devices": n,
        "round_s": t["round"].median_s,
        "times_s": t["round"].times_s,
        "compile_s": compile_s,
        "x_sharding": str(s.data.x.sharding),
        "env": common.env_info(),
        "code_fingerprint": fingerprint,
    }


def run(config: Config, reps: int | None = None) -> dict:
    fingerprint = common.code_fingerprint()
    code = "import json, sys; from experiments.bench import sharding as S; " + (
        "print(json.dumps(S.common.to_jsonable(S.worker(json.loads(sys.argv[1])))))"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in config.devices:
            print(f"  sharding: {n} device(s) ...", file=sys.stderr, flush=True)
            payload = {
                "devices": n,
                "spec": dataclasses.asdict(config.spec),
                "reps": reps or config.reps,
                "seed": config.seed,
                "out_dir": tmp,
            }
            env = {"JAX_PLATFORMS": "cpu"}
            rows.append(
                common.run_python(code, json.dumps(payload), env=env, timeout_s=config.timeout_s)
            )
        seen = {r["devices"]: r["code_fingerprint"] for r in rows}
        if set(seen.values()) != {fingerprint}:
            raise RuntimeError(
                f"the code changed during the run (fingerprint {fingerprint} at the start, per"
                f" device count {seen}): the results are not comparable, run again"
            )
        ref = np.load(Path(tmp) / f"result_{config.devices[0]}.npz")
        for row in rows:
            got = np.load(Path(tmp) / f"result_{row['devices']}.npz")
            errs = [
                float(np.max(np.abs(got[k] - ref[k])) / max(float(np.max(np.abs(ref[k]))), 1e-30))
                for k in ref.files
            ]
            row.update(max_rel_diff_vs_1=max(errs), same_numbers=max(errs) <= config.rtol)
            row["scaling"] = rows[0]["round_s"] / row["round_s"]
    targets = {"same_numbers_on_every_device_count": all(r["same_numbers"] for r in rows)}
    return {"rows": rows, "targets": targets, "code_fingerprint": fingerprint}


COLUMNS = [
    ("devices", "devices", None),
    ("round_s", "round [s]", ".3g"),
    ("scaling", "t(1)/t(N)", ".2f"),
    ("compile_s", "compile [s]", ".2f"),
    ("max_rel_diff_vs_1", "max rel diff vs 1", ".1e"),
    ("same_numbers", "same", None),
]


def main(argv: list[str] | None = None) -> dict:
    # The figures were measured in the workers: their environment is the one to record.
    return common.bench_main(argv, sys.modules[__name__], env_of=lambda r: r["rows"][0]["env"])


if __name__ == "__main__":
    main()
