"""Benchmark 1: FLOP/s of a full round of the paper's MLP against the machine's matmul FLOP/s.

One round = every client's local training (one epoch of minibatch SGD, batch 64) + PS aggregation,
for the paper's LoRA MLP 784-200-200-10 (ranks 8, 8, 5) and 10 clients of 6016 samples (about one
MNIST class). Its FLOP/s (``workload.round_flops``: ``unavoidable`` caches the first layer's frozen
product once per run, as the round does; ``naive`` recomputes it every step) against square float32
matmuls timed in the same round-robin (the best of 512, 1024, 2048). Variants: the round; the same
rounds several per call (``scan_rounds``, time per round); with ``--host-devices N``, the round on a
mesh of as many devices as divide ``m`` (``on_mesh``), checked against the plain round.
Target (issue 7): the round at >= 70% of the matmul FLOP/s on CPU (unavoidable FLOPs).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from experiments.bench import common
from experiments.bench import workload as W

NAME = "round_throughput"
TITLE = "Round FLOP/s vs matmul FLOP/s"


@dataclass(frozen=True)
class Config:
    spec: W.RoundSpec = W.RoundSpec()  # paper MLP, m = 10, n = 6016, batch 64, E = 1
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)  # reference: the best of these
    reps: int = 5
    scanned_rounds: int = 5  # also time scan_rounds (this many rounds in one call), per round
    mesh_client_chunk: int | None = None  # with --host-devices: client groups per device
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
        return Config(spec=spec, matmul_sizes=(128,), reps=2, scanned_rounds=2)
    return Config()


def run(config: Config, reps: int | None = None) -> dict:
    spec, seed = config.spec, config.seed
    data = W.make_data(spec, seed)
    setups = {"round": W.setup(spec, data, seed=seed)}
    devices = common.mesh_devices(spec.clients)
    if devices > 1:  # --host-devices: the round on a mesh too
        name = f"round, {devices} devices"
        setups[name] = W.setup(
            spec, data, seed=seed, devices=devices, client_chunk=config.mesh_client_chunk
        )
    thunks, compile_s, per_call, diffs, reference = {}, {}, {}, {}, None
    for name, s in setups.items():
        thunks[name], compiled, compile_s[name] = s.compiled()
        ours = s.global_model(compiled(s.state, s.data, s.inputs)[0])
        reference = ours if reference is None else reference
        diffs[name], per_call[name] = common.max_abs_diff(ours, reference), 1
        if config.scanned_rounds:
            key = f"{name}: scan_rounds ({config.scanned_rounds} per call), per round"
            thunks[key], compile_s[key] = s.scanned(config.scanned_rounds)
            per_call[key] = config.scanned_rounds
    t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps or config.reps)
    peak, flops = mm["gflops"] * 1e9, W.round_flops(spec)
    rows = []
    for name, calls in per_call.items():
        s = t[name].median_s / calls
        rows.append(
            {
                "variant": name,
                "round_s": s,
                "gflops_unavoidable": flops["unavoidable"] / s / 1e9,
                "matmul_gflops": peak / 1e9,
                "frac_unavoidable": flops["unavoidable"] / s / peak,
                "frac_naive": flops["naive"] / s / peak,
                "compile_s": compile_s[name],
                "times_s": t[name].times_s,
                "vs_plain_round_max_abs": diffs.get(name),
            }
        )
    targets = {row["variant"]: row["frac_unavoidable"] >= 0.7 for row in rows}
    return {"rows": rows, "flops": flops, "matmul": mm, "targets": targets}


COLUMNS = [
    ("variant", "variant", None),
    ("round_s", "round [s]", ".3g"),
    ("gflops_unavoidable", "GFLOP/s unavoid.", ".1f"),
    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
    ("frac_unavoidable", "unavoid./matmul", ".2f"),
    ("frac_naive", "naive/matmul", ".2f"),
    ("compile_s", "compile [s]", ".1f"),
]


def notes(config: Config, result: dict) -> list[str]:
    f = result["flops"]
    return [
        f"FLOPs per round: unavoidable {f['unavoidable']:.3e}, naive {f['naive']:.3e} (first"
        f" frozen product once per run: {f['first_once']:.3e}); matmul: {result['matmul']['best']}"
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
