"""Where the round's time goes: XLA's per-op profile, by kind of op, and the ceiling its dots set.

Profiles the round under test of benchmark 1 (paper MLP, m = 10, n = 6016, batch 64) and of
benchmark 2's m = 1000 row (digits MLP, 20 samples, batch 10) with ``jax.profiler`` for a few
calls, reads the trace's per-op events (XLA:CPU names each op's event after its HLO instruction)
and sums them by kind:

* ``dot, large``: products whose sides ``M``, ``N``, ``K`` (per batch entry) all exceed
  ``SKINNY`` = 16: the frozen products ``h @ W0.T`` and ``g @ W0`` of the hidden layers (``vmap``
  folds the clients into their rows);
* ``dot, skinny``: a side of at most 16: the LoRA products (rank 8 or 5, one small product per
  client) and the 10-class output layer;
* ``gather``, ``sort``, ``fusion`` (element-wise work fused by XLA), ``copy``, ``collective``
  (all-reduce and the like, sharded rounds), ``other``.

Each dot's FLOPs come from its HLO shapes, so every kind of dot also gets its GFLOP/s (the ops' own
rate; in a sharded round, one device's). The profiler slows the ops down a little, so shares are
of the profiled op time, and times are those shares of the unprofiled round's median (timed
round-robin with the matmul reference, as in benchmark 1). With ``--host-devices N`` each round
is also profiled sharded over as many devices as divide ``m`` (the digits round in client groups
of 25 per device), as benchmarks 1 and 2 run it; each device's events count once per device.

**Ceilings.** What the round could reach on XLA:CPU's dot kernels if nothing but its dots took
time, two ways: ``dot_ceiling`` assumes the dots keep their share of the wall time (unavoidable
FLOPs over ``dot share x round time``, against the matmul rate); ``dots_alone_ceiling`` measures
it: the round's dots (every ``dot`` op the profile saw run, same shapes, dimension numbers and
run counts, random operands) in one jitted program of their own, timed round-robin with the round
and the matmul. In that program the dots of one iteration are independent of each other, so XLA
may overlap them more than the round can; dots that XLA fused into other ops are left out. Both
make it faster than the round's dots can be, so its time is a floor for them.
Run: ``python -m experiments.bench.profile_round [--quick] [--out DIR] [--reps N] [--host-devices N]``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from experiments.bench import common
from experiments.bench import workload as W

NAME = "profile_round"
TITLE = "Where the round's time goes (per-op profile)"
KINDS = ("dot, large", "dot, skinny", "gather", "sort", "fusion", "copy", "collective", "other")
SKINNY = 16  # a product with a side this short (a LoRA rank, the class count) is "skinny"
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\((.*)$")
_DIMS = re.compile(r"(lhs_batch_dims|lhs_contracting_dims|rhs_batch_dims|rhs_contracting_dims)"
                   r"=\{([\d,]*)\}")  # fmt: skip
_DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}
_OPERANDS = re.compile(r"%?([\w.\-]+), %?([\w.\-]+)\)")


@dataclass(frozen=True)
class Config:
    workloads: tuple[tuple[str, W.RoundSpec], ...] = (
        ("paper MLP, m = 10", W.RoundSpec()),
        ("digits MLP, m = 1000", dataclasses.replace(W.SMALL_CLIENTS, clients=1000)),
    )
    # With --host-devices N: each workload also sharded over as many devices as divide m, in
    # client groups of this size per device (None: all at once), as benchmarks 1 and 2 run it.
    mesh_client_chunk: tuple[int | None, ...] = (None, 25)
    profiled_calls: int = 3
    reps: int = 5
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
        return Config(
            workloads=(("tiny", spec),),
            mesh_client_chunk=(None,),
            profiled_calls=1,
            reps=2,
            matmul_sizes=(128,),
        )
    return Config()


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """``{instruction name: {"op", "shape", "kind", "flops", "dot"}}`` from compiled HLO text.

    ``dot`` (dots only, else None): ``{"dtype", "lhs", "rhs", "dimension_numbers"}``, the operand
    shapes and ``lax.dot_general``'s dimension numbers, enough to run the same product again.
    """
    defs = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            name, dtype, dims, op, rest = m.groups()
            shape = tuple(int(d) for d in dims.split(",") if d)
            defs[name] = {"op": op, "shape": shape, "rest": rest, "dtype": dtype}
    ops = {}
    for name, d in defs.items():
        op, rest, flops, dot = d["op"], d["rest"], None, None
        if op == "dot":
            dims = {k: tuple(int(i) for i in v.split(",") if i) for k, v in _DIMS.findall(rest)}
            operands = _OPERANDS.match(rest)
            lhs, rhs = (defs.get(n) for n in operands.groups()) if operands else (None, None)
            if lhs is not None and rhs is not None:
                k = math.prod(lhs["shape"][i] for i in dims.get("lhs_contracting_dims", ()))
                flops = 2.0 * math.prod(d["shape"]) * k
                dot = {
                    "dtype": d["dtype"],
                    "lhs": lhs["shape"],
                    "rhs": rhs["shape"],
                    "dimension_numbers": (
                        (
                            dims.get("lhs_contracting_dims", ()),
                            dims.get("rhs_contracting_dims", ()),
                        ),
                        (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())),
                    ),
                }
            kind = "dot, large"
            if lhs is not None and rhs is not None:
                sides = (  # M, N, K of one batch entry's product
                    _free_size(lhs["shape"], dims, "lhs"),
                    _free_size(rhs["shape"], dims, "rhs"),
                    math.prod(lhs["shape"][i] for i in dims.get("lhs_contracting_dims", ())),
                )
                kind = "dot, skinny" if min(sides) <= SKINNY else "dot, large"
        elif "gather" in name or op == "gather":
            kind = "gather"
        elif op == "sort" or "sort" in name:
            kind = "sort"
        elif op == "fusion":
            kind = "fusion"
        elif op == "copy":
            kind = "copy"
        elif op.startswith(_COLLECTIVES):
            kind = "collective"
        else:
            kind = "other"
        ops[name] = {"op": op, "shape": d["shape"], "kind": kind, "flops": flops, "dot": dot}
    return ops


def _free_size(shape: tuple[int, ...], dims: dict, side: str) -> int:
    """Size of an operand's dimensions that are neither batch nor contracting ones."""
    bound = set(dims.get(f"{side}_batch_dims", ())) | set(dims.get(f"{side}_contracting_dims", ()))
    return math.prod(n for i, n in enumerate(shape) if i not in bound)


def dots_alone(dots: list[tuple[dict, int]], seed: int = 0, devices: int = 1) -> Callable[[], Any]:
    """A thunk running the given dots, each ``runs`` times, and nothing else.

    ``devices > 1``: the same dots on each of the first ``devices`` JAX devices at once
    (``jax.shard_map``), as each device of a sharded round runs its share's dots.

    ``dots``: ``(hlo_ops(...)[name]["dot"], runs)`` pairs. Dots with the same run count run in one
    jitted ``lax.scan`` of that length; their operands pass through ``lax.optimization_barrier``
    in every iteration, so XLA cannot hoist the loop-invariant products out of the loop; the
    products are carried (each iteration writes over the last one's, as the round's steps do).
    """
    rng = np.random.default_rng(seed)
    by_runs: dict[int, list[dict]] = collections.defaultdict(list)
    for dot, runs in dots:
        by_runs[runs].append(dot)
    calls = []
    for runs, group in by_runs.items():
        operands = [
            tuple(
                jnp.asarray(rng.standard_normal(shape), dtype=_DTYPES[dot["dtype"]])
                for shape in (dot["lhs"], dot["rhs"])
            )
            for dot in group
        ]
        numbers = [dot["dimension_numbers"] for dot in group]

        def products(held, numbers=numbers):
            return [jax.lax.dot_general(a, b, n) for (a, b), n in zip(held, numbers, strict=True)]

        def program(operands, products=products, runs=runs):
            def body(carry, _):
                held = jax.lax.optimization_barrier(carry[0])
                return (held, products(held)), None

            start = [jnp.zeros(s.shape, s.dtype) for s in jax.eval_shape(products, operands)]
            return jax.lax.scan(body, (operands, start), None, length=runs)[0][1]

        if devices > 1:  # one copy of the operands per device, each device runs the program
            mesh = common.host_mesh(devices, "devices")
            operands = jax.device_put(
                jax.tree.map(lambda x: jnp.broadcast_to(x, (devices, *x.shape)), operands),
                NamedSharding(mesh, PartitionSpec("devices")),
            )
            one = program

            def program(operands, one=one):
                products = one(jax.tree.map(lambda x: x[0], operands))
                return jax.tree.map(lambda x: x[None], products)

            program = jax.shard_map(
                program,
                mesh=mesh,
                in_specs=PartitionSpec("devices"),
                out_specs=PartitionSpec("devices"),
                check_vma=False,  # the carried products start as zeros common to all devices
            )
        compiled = jax.jit(program).lower(operands).compile()
        calls.append(lambda c=compiled, a=operands: c(a))
    return lambda: [call() for call in calls]


def profile_ops(thunk, calls: int) -> dict[str, tuple[float, float]]:
    """``{op name: (seconds, executions)}`` per call (XLA:CPU trace events), over ``calls`` calls.

    An op inside a loop (the minibatch ``scan``) runs, and is recorded, once per iteration."""
    jax.block_until_ready(thunk())  # nothing of an earlier, unfinished call in the trace
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(thunk())
        files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
        if not files:
            raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {trace_dir}")
        with gzip.open(files[-1]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    seconds, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            seconds[e["name"]] += e["dur"] * 1e-6 / calls
            count[e["name"]] += 1 / calls
    return {name: (seconds[name], count[name]) for name in seconds}


def run(config: Config, reps: int | None = None) -> dict:
    reps = config.reps if reps is None else reps
    specs, ops, profiles = {}, {}, {}
    thunks = {}
    cases = []
    for (label, spec), chunk in zip(config.workloads, config.mesh_client_chunk, strict=True):
        cases.append((label, spec, 1, None))
        devices = common.mesh_devices(spec.clients)
        if devices > 1:  # --host-devices: also the round sharded over them
            groups = f", groups of {chunk}" if chunk else ""
            cases.append((f"{label}, {devices} devices{groups}", spec, devices, chunk))
    for label, spec, devices, chunk in cases:
        s = W.setup(spec, seed=config.seed, devices=devices, client_chunk=chunk)
        thunks[label], compiled, _ = s.compiled()
        specs[label], ops[label] = spec, hlo_ops(compiled.as_text())
        # Every device records its own events under the same op names: runs per device.
        profiles[label] = {
            name: (s / devices, n / devices)
            for name, (s, n) in profile_ops(thunks[label], config.profiled_calls).items()
        }
        ran = [
            (ops[label][name]["dot"], round(n))
            for name, (_, n) in profiles[label].items()
            if name in ops[label] and ops[label][name]["dot"] is not None and round(n) > 0
        ]
        thunks[f"{label}: dots alone"] = dots_alone(ran, config.seed, devices)
    t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps)
    peak = mm["gflops"] * 1e9
    rows, summary = [], []
    for label, spec in specs.items():
        per_op = profiles[label]
        seen = {name: s for name, (s, _) in per_op.items() if name in ops[label]}
        runs = {name: n for name, (_, n) in per_op.items() if name in ops[label]}
        profiled = sum(seen.values())
        round_s = t[label].median_s
        by_kind = collections.defaultdict(lambda: {"s": 0.0, "flops": 0.0, "ops": 0})
        for name, s in seen.items():
            info = by_kind[ops[label][name]["kind"]]
            info["s"] += s
            info["ops"] += 1
            info["flops"] += (ops[label][name]["flops"] or 0.0) * runs[name]
        for kind in KINDS:
            if kind not in by_kind:
                continue
            info = by_kind[kind]
            share = info["s"] / profiled
            rows.append(
                {
                    "workload": label,
                    "kind": kind,
                    "ops": info["ops"],
                    "share": share,
                    "round_ms": 1e3 * share * round_s,
                    "gflops": info["flops"] / info["s"] / 1e9 if info["flops"] else None,
                }
            )
        dot_share = sum(by_kind[k]["s"] for k in KINDS[:2]) / profiled
        unavoidable = W.round_flops(spec)["unavoidable"]
        alone_s = t[f"{label}: dots alone"].median_s
        summary.append(
            {
                "workload": label,
                "round_s": round_s,
                "profiled_op_s": profiled,
                "dot_share": dot_share,
                "frac_unavoidable": unavoidable / round_s / peak,
                "dot_ceiling": unavoidable / (dot_share * round_s) / peak,
                "dots_alone_s": alone_s,
                "dots_alone_ceiling": unavoidable / alone_s / peak,
                "top_ops": sorted(
                    (
                        {
                            "name": n,
                            "s": s,
                            "runs": runs[n],
                            **{k: ops[label][n][k] for k in ("kind", "shape", "flops")},
                        }
                        for n, s in seen.items()
                    ),
                    key=lambda r: -r["s"],
                )[:12],
            }
        )
    return {"rows": rows, "summary": summary, "matmul": mm, "targets": None}


SUMMARY_COLUMNS = [
    ("workload", "workload", None),
    ("round_s", "round [s]", ".3g"),
    ("dot_share", "dots' share", ".2f"),
    ("frac_unavoidable", "unavoid./matmul", ".2f"),
    ("dot_ceiling", "ceiling (dot share)", ".2f"),
    ("dots_alone_s", "dots alone [s]", ".3g"),
    ("dots_alone_ceiling", "ceiling (dots alone)", ".2f"),
]
ROW_COLUMNS = [
    ("workload", "workload", None),
    ("kind", "kind of op", None),
    ("ops", "ops", "d"),
    ("share", "share", ".2f"),
    ("round_ms", "ms per round", ".1f"),
    ("gflops", "GFLOP/s", ".1f"),
]


def table(result: dict) -> str:
    return "\n\n".join(
        [
            common.format_table(result["summary"], SUMMARY_COLUMNS),
            common.format_table(result["rows"], ROW_COLUMNS),
        ]
    )


def notes(config: Config, result: dict) -> list[str]:
    return [
        f"matmul reference: {result['matmul']['gflops']:.1f} GFLOP/s"
        f" (best of {config.matmul_sizes}); {config.profiled_calls} profiled calls per workload.",
        "ceilings: unavoidable FLOPs / (dots' share x round time) / matmul, and unavoidable FLOPs"
        " / (the round's dots run alone) / matmul: the round with every op but its dots free.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
