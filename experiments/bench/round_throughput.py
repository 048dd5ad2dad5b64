"""Benchmark 1: FLOP/s of a full round of the paper's MLP vs the machine's matmul FLOP/s.

One round = every client's local training (one epoch of minibatch SGD, batch 64) + aggregation (PS),
for the paper's LoRA MLP 784-200-200-10 (ranks 8, 8, 5: delta = 0.05) and 10 clients of 6016
samples each (about one MNIST class; 94 full batches). Its achieved FLOP/s is compared with jitted
square matmuls timed in the same run, round-robin (the best of 512, 1024, 2048). FLOPs are counted
two ways (see ``workload.round_flops``):

* ``unavoidable``: what the round cannot avoid (DESIGN.md): the first layer's frozen product
  ``x @ W0_1.T`` depends only on the data and is computed once per run, not every step;
* ``naive``: a plain forward/backward that recomputes it at every step.

Variants: the round under test (abo_jax's simulator, which caches that product with ``sim.prepare``),
the same rounds run several per call by ``sim.rounds`` (one ``lax.scan``; time per round), and, for
comparison, the bench's own reference round fed the cached product (``bench_cached_first``)
and recomputing it every step (``bench_naive``). With ``--host-devices N`` (N JAX CPU devices), also
the simulator's round sharded over as many of them as divide ``m`` (``make_simulation(mesh=...)``,
client groups of ``mesh_client_chunk`` per device), checked against the plain round.
Run: ``python -m experiments.bench.round_throughput [--quick] [--out DIR] [--host-devices N]``.
Target (issue 7): the round at >= 70% of the matmul FLOP/s on CPU (unavoidable FLOPs).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W

NAME = "round_throughput"
TITLE = "Round FLOP/s vs matmul FLOP/s"


@dataclass(frozen=True)
class Config:
    spec: W.RoundSpec = W.RoundSpec()  # paper MLP, m = 10, n = 6000, batch 64, E = 1
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)  # reference: the best of these
    reps: int = 5
    experiments: bool = True  # also time the bench's own round with and without the cache
    scanned_rounds: int = 5  # also time sim.rounds (this many rounds in one call), per round
    mesh_client_chunk: int | None = None  # with --host-devices: client groups per device
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
        return Config(spec=spec, matmul_sizes=(128,), reps=2, experiments=False, scanned_rounds=2)
    return Config()


def xla_flops(compiled) -> float | None:
    """XLA's own FLOP estimate of a compiled executable (loops may be counted once), or None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without cost analysis
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return None if not cost or "flops" not in cost else float(cost["flops"])


def run(config: Config, reps: int | None = None) -> dict:
    reps = config.reps if reps is None else reps
    spec = config.spec
    problem = W.make_problem(spec, config.seed)
    harnesses = {"round": R.make_harness(spec, problem, seed=config.seed)}
    if config.experiments:
        harnesses["bench_cached_first"] = R.make_harness(
            spec, problem, impl="bench", cache_first=True, seed=config.seed
        )
        harnesses["bench_naive"] = R.make_harness(spec, problem, impl="bench", seed=config.seed)
    thunks, compile_s, xla = {}, {}, {}
    for name, h in harnesses.items():
        thunks[name], compiled, compile_s[name] = common.compiled_thunk(h.vmapped, *h.vmapped_args)
        xla[name] = xla_flops(compiled)
    per_call = dict.fromkeys(thunks, 1)
    scanned = {"round": harnesses["round"].scanned}
    devices = common.mesh_devices(spec.clients)
    diffs = {}
    if harnesses["round"].impl == "sim" and devices > 1:  # --host-devices: the round sharded
        h = harnesses["round"]
        reference = h.global_of(thunks["round"]())
        v = R.sim_variant(
            spec,
            problem,
            reference,
            devices=devices,
            client_chunk=config.mesh_client_chunk,
            seed=config.seed,
        )
        name = f"round, {v.name}"
        thunks[name], compile_s[name], xla[name], per_call[name] = v.thunk, v.compile_s, None, 1
        scanned[name], diffs[name] = v.scanned, v.max_abs_diff
    for base, make in scanned.items():
        if make is not None and config.scanned_rounds:
            name = f"{base}: sim.rounds ({config.scanned_rounds} per call), per round"
            thunks[name], compile_s[name] = make(config.scanned_rounds)
            xla[name], per_call[name] = None, config.scanned_rounds
    t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps)
    peak = mm["gflops"] * 1e9
    flops = W.round_flops(spec)
    rows = []
    for name in per_call:
        s = t[name].median_s / per_call[name]
        rows.append(
            {
                "variant": name,
                "round_s": s,
                "gflops_unavoidable": flops["unavoidable"] / s / 1e9,
                "gflops_naive": flops["naive"] / s / 1e9,
                "frac_unavoidable": flops["unavoidable"] / s / peak,
                "frac_naive": flops["naive"] / s / peak,
                "matmul_gflops": peak / 1e9,
                "xla_cost_analysis_flops": xla[name],
                "compile_s": compile_s[name],
                "times_s": t[name].times_s,
                "vs_plain_round_max_abs": diffs.get(name),
            }
        )
    targets = {row["variant"]: row["frac_unavoidable"] >= 0.7 for row in rows}
    return {
        "rows": rows,
        "flops": flops,
        "matmul": mm,
        "targets": targets,
        "round_impl": harnesses["round"].impl,
    }


COLUMNS = [
    ("variant", "variant", None),
    ("round_s", "round [s]", ".3g"),
    ("gflops_unavoidable", "GFLOP/s unavoid.", ".1f"),
    ("gflops_naive", "GFLOP/s naive", ".1f"),
    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
    ("frac_unavoidable", "unavoid./matmul", ".2f"),
    ("frac_naive", "naive/matmul", ".2f"),
    ("compile_s", "compile [s]", ".1f"),
]


def notes(config: Config, result: dict, env: dict) -> list[str]:
    f = result["flops"]
    return [
        f"FLOPs per round: unavoidable {f['unavoidable']:.3e}, naive {f['naive']:.3e}"
        f" (first-layer frozen product once per run: {f['first_once']:.3e});"
        f" matmul reference: best of {config.matmul_sizes} square float32 products"
        f" ({result['matmul']['best']}).",
        "bench_cached_first / bench_naive: the bench's own round (workload.py) with x @ W0_1.T"
        " cached once per run / recomputed every step.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main(sys.argv[1:])
