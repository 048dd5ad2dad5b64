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

The simulator's round runs in up to three configurations per ``m`` (rows of the table), each checked
against the plain one: one device with all clients at once; one device in client groups of
``client_chunk`` (``make_simulation(client_chunk=...)``: a group's activations stay in cache);
and, with ``--host-devices N`` (N JAX CPU devices, so the cores run devices' work side by side),
sharded over as many devices as divide ``m``, in groups of ``mesh_client_chunk`` per device. In a
process with several CPU devices JAX runs one-device work somewhat slower (the loops included), so
compare the loops of a one-device run with the sharded round as well (RESULTS.md does).

Also times square matmuls (best of 512, 1024, 2048) in the same run for the FLOP/s reference.
Run: ``python -m experiments.bench.vmap_vs_loop [--quick] [--out DIR] [--host-devices N]``.
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
    client_chunk: int | None = 125  # also time the round in client groups of this many
    mesh_client_chunk: int | None = 25  # with --host-devices: groups of this many per device
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = W.TINY
        return Config(
            clients=(4,),
            spec=spec,
            matmul_sizes=(128,),
            reps=2,
            scanned_rounds=2,
            client_chunk=3,
            mesh_client_chunk=1,
        )
    return Config()


def variants(
    config: Config, spec: W.RoundSpec, problem: W.Problem, h: R.Harness, vmapped, compile_s: float
):
    """The round configurations timed at this ``m``, as :class:`~experiments.bench.rounds.Variant`.

    Always the harness's round (``vmapped``, compiled in ``compile_s`` seconds: one device, all clients
    at once); with the simulator also the round in client groups of ``config.client_chunk`` and,
    when JAX has several devices (``--host-devices``), sharded over as many as divide ``m`` in
    groups of ``config.mesh_client_chunk`` per device.
    """
    m = spec.clients
    out = [R.plain_variant(h, vmapped, compile_s)]
    if h.impl != "sim":
        return out
    wanted = []
    if config.client_chunk and config.client_chunk < m:
        wanted.append((1, config.client_chunk))
    devices = common.mesh_devices(m)
    if devices > 1:
        chunk = config.mesh_client_chunk
        wanted.append((devices, chunk if chunk and chunk < m // devices else None))
    reference = h.global_of(vmapped())
    for devices, chunk in wanted:
        out.append(
            R.sim_variant(
                spec, problem, reference, devices=devices, client_chunk=chunk, seed=config.seed
            )
        )
    return out


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
        found = variants(config, spec, problem, h, vmapped, vm_c)
        thunks = {"loop_update": h.loop_update, "loop_step": h.loop_step}
        compile_s = {}
        for v in found:
            thunks[v.name], compile_s[v.name] = v.thunk, v.compile_s
            if v.scanned is not None and config.scanned_rounds:
                key = f"{v.name} (sim.rounds)"
                thunks[key], compile_s[key] = v.scanned(config.scanned_rounds)
        a_check = h.check()
        print(f"  vmap_vs_loop: m={m} ...", file=sys.stderr, flush=True)
        t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps)
        peak = mm["gflops"] * 1e9
        flops = W.round_flops(spec)
        ta, tb = t["loop_update"].median_s, t["loop_step"].median_s
        for v in found:
            name, tv = v.name, t[v.name].median_s
            row = {
                "m": m,
                "variant": name,
                "vmapped_s": tv,
                "loop_update_s": ta,
                "loop_step_s": tb,
                "speedup_a": ta / tv,
                "speedup_b": tb / tv,
                "matmul_gflops": peak / 1e9,
                "matmul": mm,
                "vmapped_gflops_naive": flops["naive"] / tv / 1e9,
                "vmapped_gflops_unavoidable": flops["unavoidable"] / tv / 1e9,
                "frac_matmul_naive": flops["naive"] / tv / peak,
                "frac_matmul_unavoidable": flops["unavoidable"] / tv / peak,
                "flops": flops,
                "compile_s": compile_s,
                "times_s": common.times_of(t),
                "a_vs_vmapped_max_abs": a_check,
                "variant_vs_plain_max_abs": v.max_abs_diff,
            }
            key = f"{name} (sim.rounds)"
            if key in t:  # R rounds in one sim.rounds call: time per round
                ts = t[key].median_s / config.scanned_rounds
                row.update(scanned_s=ts, speedup_a_scanned=ta / ts, speedup_b_scanned=tb / ts)
            rows.append(row)
    targets = None
    if config.clients[-1] == 1000:
        targets = {
            row["variant"]: {
                "ge_5x_vs_a": row["speedup_a"] >= 5,
                "ge_10x_vs_b": row["speedup_b"] >= 10,
                "ge_half_matmul_naive": row["frac_matmul_naive"] >= 0.5,
                "ge_half_matmul_unavoidable": row["frac_matmul_unavoidable"] >= 0.5,
            }
            for row in rows
            if row["m"] == 1000
        }
    return {"rows": rows, "targets": targets, "round_impl": impl}


COLUMNS = [
    ("m", "m", None),
    ("variant", "round", None),
    ("vmapped_s", "round [s]", ".3g"),
    ("loop_update_s", "(a) loop/update [s]", ".3g"),
    ("loop_step_s", "(b) loop/step [s]", ".3g"),
    ("speedup_a", "vs (a)", ".1f"),
    ("speedup_b", "vs (b)", ".1f"),
    ("scanned_s", "sim.rounds [s/round]", ".3g"),
    ("speedup_a_scanned", "vs (a), scanned", ".1f"),
    ("speedup_b_scanned", "vs (b), scanned", ".1f"),
    ("vmapped_gflops_unavoidable", "GFLOP/s unavoid.", ".1f"),
    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
    ("frac_matmul_naive", "naive/matmul", ".2f"),
    ("frac_matmul_unavoidable", "unavoid./matmul", ".2f"),
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
