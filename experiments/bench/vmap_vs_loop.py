"""Benchmark 2: one vmapped, jitted round against per-client loops of jitted code.

Many small clients (20 samples, batch 10, one local epoch, the digits-sized LoRA MLP 64-200-200-10).
Against the round (``workload.setup``), the baselines of ``workload.loops``: (a) the round's own
``client_update`` jitted once and called client by client, (b) one jitted SGD step per minibatch
per client with host-side batching; each then the jitted server step. Rows per ``m``: the round on
one device with all clients at once, in client groups of ``client_chunk`` (``client_groups``), and
with ``--host-devices N`` on a mesh of as many devices as divide ``m``, in groups of
``mesh_client_chunk`` per device; each checked against the plain round, (a) checked against the
round with in-order batches (no dependence on key derivation); ``scan_rounds`` timed per round.
In a process with several CPU devices JAX runs one-device work slower, the loops included.
Targets (issue 7), CPU, ``m = 1000``: >= 5x vs (a), >= 10x vs (b), FLOP/s >= half of matmul.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass

import abo_jax
from experiments.bench import common
from experiments.bench import workload as W

NAME = "vmap_vs_loop"
TITLE = "vmap vs per-client loops"


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000)
    spec: W.RoundSpec = W.SMALL_CLIENTS  # m set per row
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    reps: int = 5
    scanned_rounds: int = 5  # also time scan_rounds (this many rounds per call), per round
    client_chunk: int | None = 125  # also the round in client groups of this many
    mesh_client_chunk: int | None = 25  # with --host-devices: groups of this many per device
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        return Config(
            clients=(4,),
            spec=W.TINY,
            matmul_sizes=(128,),
            reps=2,
            scanned_rounds=2,
            client_chunk=3,
            mesh_client_chunk=1,
        )
    return Config()


def check_loop_a(spec: W.RoundSpec, data, seed: int) -> float:
    """``max |loop (a) - round|`` of the global model, both with in-order batches."""
    in_order = functools.partial(abo_jax.client_update, batches_fn=W.in_order_batches)
    s = W.setup(spec, data, seed=seed, client_update=in_order)
    loop_update, _, _ = W.loops(spec, s, seed=seed)
    return common.max_abs_diff(loop_update(), s.global_model(s.compiled()[0]()[0]))


def variants(config: Config, m: int) -> dict[str, dict]:
    """The round's configurations at ``m``: ``{row name: workload.setup arguments}``."""
    out = {"1 device, all clients at once": {}}
    if config.client_chunk and config.client_chunk < m:
        out[f"1 device, groups of {config.client_chunk}"] = {"client_chunk": config.client_chunk}
    devices = common.mesh_devices(m)
    if devices > 1:
        chunk = config.mesh_client_chunk
        chunk = chunk if chunk and chunk < m // devices else None
        groups = f"groups of {chunk}" if chunk else "all clients at once"
        out[f"{devices} devices, {groups}"] = {"devices": devices, "client_chunk": chunk}
    return out


def run(config: Config, reps: int | None = None) -> dict:
    rows = []
    for m in config.clients:
        spec = dataclasses.replace(config.spec, clients=m)
        data = W.make_data(spec, config.seed)
        setups = {
            n: W.setup(spec, data, seed=config.seed, **kw) for n, kw in variants(config, m).items()
        }
        plain = next(iter(setups.values()))
        loop_update, loop_step, _ = W.loops(spec, plain, seed=config.seed)
        thunks = {"loop_update": loop_update, "loop_step": loop_step}
        diffs, reference = {}, None
        for name, s in setups.items():
            thunks[name], compiled, _ = s.compiled()
            ours = s.global_model(compiled(s.state, s.data, s.inputs)[0])
            reference = ours if reference is None else reference
            diffs[name] = common.max_abs_diff(ours, reference)
            if config.scanned_rounds:
                thunks[f"{name} (scan_rounds)"] = s.scanned(config.scanned_rounds)[0]
        a_check = check_loop_a(spec, data, config.seed)
        print(f"  vmap_vs_loop: m={m} ...", file=sys.stderr, flush=True)
        t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps or config.reps)
        peak, flops = mm["gflops"] * 1e9, W.round_flops(spec)
        ta, tb = t["loop_update"].median_s, t["loop_step"].median_s
        for name in setups:
            tv = t[name].median_s
            row = {
                "m": m,
                "variant": name,
                "vmapped_s": tv,
                "loop_update_s": ta,
                "loop_step_s": tb,
                "speedup_a": ta / tv,
                "speedup_b": tb / tv,
                "matmul_gflops": peak / 1e9,
                "frac_matmul_unavoidable": flops["unavoidable"] / tv / peak,
                "frac_matmul_naive": flops["naive"] / tv / peak,
                "times_s": {k: v.times_s for k, v in t.items()},
                "a_vs_vmapped_max_abs": a_check,
                "variant_vs_plain_max_abs": diffs[name],
            }
            if f"{name} (scan_rounds)" in t:
                ts = t[f"{name} (scan_rounds)"].median_s / config.scanned_rounds
                row.update(scanned_s=ts, speedup_a_scanned=ta / ts, speedup_b_scanned=tb / ts)
            rows.append(row)
    targets = {
        row["variant"]: {
            "ge_5x_vs_a": row["speedup_a"] >= 5,
            "ge_10x_vs_b": row["speedup_b"] >= 10,
            "ge_half_matmul_unavoidable": row["frac_matmul_unavoidable"] >= 0.5,
        }
        for row in rows
        if row["m"] == 1000
    }
    return {"rows": rows, "targets": targets or None}


COLUMNS = [
    ("m", "m", None),
    ("variant", "round", None),
    ("vmapped_s", "round [s]", ".3g"),
    ("loop_update_s", "(a) loop/update [s]", ".3g"),
    ("loop_step_s", "(b) loop/step [s]", ".3g"),
    ("speedup_a", "vs (a)", ".1f"),
    ("speedup_b", "vs (b)", ".1f"),
    ("scanned_s", "scanned [s/round]", ".3g"),
    ("speedup_a_scanned", "vs (a), scanned", ".1f"),
    ("speedup_b_scanned", "vs (b), scanned", ".1f"),
    ("frac_matmul_unavoidable", "unavoid./matmul", ".2f"),
]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
