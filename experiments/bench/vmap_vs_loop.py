"""Benchmark 2: one vmapped, jitted round vs per-client loops of jitted code.

Many small clients (20 samples each, batch 10, one local epoch, the digits-sized LoRA MLP
64-200-200-10). Variants, all computing the same maths:

* ``vmapped``: the whole round (every client's local update + PS aggregation) is one jitted call;
* ``(a) loop/update``: one jitted local update per client, called in a Python loop, then the jitted
  aggregation;
* ``(b) loop/step``: one jitted SGD step per minibatch per client with host-side batching (the way
  per-client-loop JAX frameworks simulate), then the jitted aggregation;
* ``sim.rounds``: several vmapped rounds in one jitted ``lax.scan`` (time per round): what a run of
  many rounds can use; the targets are judged on the single round.

Also times square matmuls (best of 512, 1024, 2048) in the same run for the FLOP/s reference.
Run: ``python -m experiments.bench.vmap_vs_loop [--quick] [--out DIR]``.
Targets (issue 7), CPU, ``m = 1000``: >= 5x vs (a), >= 10x vs (b), vmapped FLOP/s >= half of matmul.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W

NAME = "vmap_vs_loop"
TITLE = "vmap vs per-client loops"


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000)
    spec: W.RoundSpec = W.SMALL_CLIENTS  # m set per row
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)  # reference: the best of these
    reps: int = 5
    scanned_rounds: int = 5  # also time sim.rounds (this many rounds in one call), per round
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = W.TINY
        return Config(clients=(4,), spec=spec, matmul_sizes=(128,), reps=2, scanned_rounds=2)
    return Config()


def run(config: Config, reps: int | None = None) -> dict:
    reps = config.reps if reps is None else reps
    rows = []
    impl = None
    for m in config.clients:
        spec = dataclasses.replace(config.spec, clients=m)
        problem = W.make_problem(spec, config.seed)
        h = R.make_harness(spec, problem, seed=config.seed)
        impl = h.impl
        vmapped, _, vm_c = common.compiled_thunk(h.vmapped, *h.vmapped_args)
        check = {"a_vs_vmapped_max_abs": h.check()}
        thunks = {"vmapped": vmapped, "loop_update": h.loop_update, "loop_step": h.loop_step}
        scanned = {}
        if h.scanned is not None and config.scanned_rounds:
            thunks["scanned"], scanned["compile_s"] = h.scanned(config.scanned_rounds)
        print(f"  vmap_vs_loop: m={m} ...", file=sys.stderr, flush=True)
        t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps)
        peak = mm["gflops"] * 1e9
        flops = W.round_flops(spec)
        tv = t["vmapped"].median_s
        rows.append(
            {
                "m": m,
                "vmapped_s": tv,
                "loop_update_s": t["loop_update"].median_s,
                "loop_step_s": t["loop_step"].median_s,
                "speedup_a": t["loop_update"].median_s / tv,
                "speedup_b": t["loop_step"].median_s / tv,
                "matmul_gflops": peak / 1e9,
                "matmul": mm,
                "vmapped_gflops_naive": flops["naive"] / tv / 1e9,
                "vmapped_gflops_unavoidable": flops["unavoidable"] / tv / 1e9,
                "frac_matmul_naive": flops["naive"] / tv / peak,
                "frac_matmul_unavoidable": flops["unavoidable"] / tv / peak,
                "flops": flops,
                "compile_s": {"vmapped": vm_c, "scanned": scanned.get("compile_s")},
                "times_s": common.times_of(t),
                **check,
            }
        )
        if scanned:  # R rounds in one sim.rounds call: time per round
            ts = t["scanned"].median_s / config.scanned_rounds
            rows[-1].update(
                scanned_s=ts,
                speedup_a_scanned=t["loop_update"].median_s / ts,
                speedup_b_scanned=t["loop_step"].median_s / ts,
            )
    last = rows[-1]
    targets = None
    if last["m"] == 1000:
        targets = {
            "m1000_ge_5x_vs_a": last["speedup_a"] >= 5,
            "m1000_ge_10x_vs_b": last["speedup_b"] >= 10,
            "m1000_vmapped_ge_half_matmul_naive": last["frac_matmul_naive"] >= 0.5,
            "m1000_vmapped_ge_half_matmul_unavoidable": last["frac_matmul_unavoidable"] >= 0.5,
        }
    return {"rows": rows, "targets": targets, "round_impl": impl}


COLUMNS = [
    ("m", "m", None),
    ("vmapped_s", "vmapped [s]", ".3g"),
    ("loop_update_s", "(a) loop/update [s]", ".3g"),
    ("loop_step_s", "(b) loop/step [s]", ".3g"),
    ("speedup_a", "vs (a)", ".1f"),
    ("speedup_b", "vs (b)", ".1f"),
    ("scanned_s", "sim.rounds [s/round]", ".3g"),
    ("speedup_a_scanned", "vs (a), scanned", ".1f"),
    ("speedup_b_scanned", "vs (b), scanned", ".1f"),
    ("vmapped_gflops_naive", "GFLOP/s naive", ".1f"),
    ("vmapped_gflops_unavoidable", "GFLOP/s unavoid.", ".1f"),
    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
    ("frac_matmul_naive", "naive/matmul", ".2f"),
]


NOTES = (
    "loops (a)/(b) run the same one-client maths and the same cached inputs; (a) is checked"
    " to give the vmapped round's result (a_vs_vmapped_max_abs in the JSON); (b) batches on"
    " the host with numpy, as per-client-loop frameworks do.",
    "naive FLOPs recompute x @ W0_1.T every step; unavoidable FLOPs cache it (DESIGN.md).",
)


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main(sys.argv[1:])
