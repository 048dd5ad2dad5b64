"""Where the round's time goes: XLA's per-op profile, by kind of op, and the ceiling its dots set.

Profiles the round under test of benchmark 1 (paper MLP, m = 10, n = 6016, batch 64) and of
benchmark 2's m = 1000 row (digits MLP, 20 samples, batch 10) with ``jax.profiler`` for a few
calls, reads the trace's per-op events (XLA:CPU names each op's event after its HLO instruction)
and sums them by kind:

* ``dot, shared operand``: dots without batch dimensions, the frozen products ``h @ W0.T`` and
  ``g @ W0`` (``vmap`` folds the clients into their rows);
* ``dot, per client``: batched dots, one small product per client (the LoRA products);
* ``gather``, ``sort``, ``fusion`` (element-wise work fused by XLA), ``copy``, ``other``.

Each dot's FLOPs come from its HLO shapes, so every kind of dot also gets its GFLOP/s. The
profiler slows the ops down a little, so shares are of the profiled op time, and times are those
shares of the unprofiled round's median (timed round-robin with the matmul reference, as in
benchmark 1).

**Ceiling.** With everything but the dots free and the dots as fast as they ran here, the round
would take ``dot share x round time``; its unavoidable FLOPs over that time, against the matmul
rate, bound what the round can reach while it runs on XLA:CPU's dot kernels.
Run: ``python -m experiments.bench.profile_round [--quick] [--out DIR] [--reps N]``.
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
from dataclasses import dataclass

import jax

from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W

NAME = "profile_round"
TITLE = "Where the round's time goes (per-op profile)"
KINDS = ("dot, shared operand", "dot, per client", "gather", "sort", "fusion", "copy", "other")

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\((.*)$")
_DIMS = re.compile(r"(lhs_batch_dims|lhs_contracting_dims)=\{([\d,]*)\}")


@dataclass(frozen=True)
class Config:
    workloads: tuple[tuple[str, W.RoundSpec], ...] = (
        ("paper MLP, m = 10", W.RoundSpec()),
        ("digits MLP, m = 1000", dataclasses.replace(W.SMALL_CLIENTS, clients=1000)),
    )
    profiled_calls: int = 3
    reps: int = 5
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = dataclasses.replace(W.TINY, clients=2, samples=40)
        return Config(workloads=(("tiny", spec),), profiled_calls=1, reps=2, matmul_sizes=(128,))
    return Config()


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """``{instruction name: {"op", "shape", "kind", "flops"}}`` from a compiled module's HLO text."""
    defs = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            name, _, dims, op, rest = m.groups()
            shape = tuple(int(d) for d in dims.split(",") if d)
            defs[name] = {"op": op, "shape": shape, "rest": rest}
    ops = {}
    for name, d in defs.items():
        op, rest, flops = d["op"], d["rest"], None
        if op == "dot":
            dims = dict(_DIMS.findall(rest))
            lhs = re.match(r"%?([\w.\-]+)", rest).group(1)
            contracting = [int(i) for i in dims.get("lhs_contracting_dims", "").split(",") if i]
            lhs_shape = defs[lhs]["shape"] if lhs in defs else None
            if lhs_shape is not None:
                k = math.prod(lhs_shape[i] for i in contracting)
                flops = 2.0 * math.prod(d["shape"]) * k
            kind = "dot, per client" if dims.get("lhs_batch_dims") else "dot, shared operand"
        elif "gather" in name or op == "gather":
            kind = "gather"
        elif op == "sort" or "sort" in name:
            kind = "sort"
        elif op == "fusion":
            kind = "fusion"
        elif op == "copy":
            kind = "copy"
        else:
            kind = "other"
        ops[name] = {"op": op, "shape": d["shape"], "kind": kind, "flops": flops}
    return ops


def profile_ops(thunk, calls: int) -> dict[str, tuple[float, float]]:
    """``{op name: (seconds, executions)}`` per call (XLA:CPU trace events), over ``calls`` calls.

    An op inside a loop (the minibatch ``scan``) runs, and is recorded, once per iteration."""
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
    harnesses, ops = {}, {}
    thunks = {}
    for label, spec in config.workloads:
        h = R.make_harness(spec, W.make_problem(spec, config.seed), seed=config.seed)
        thunks[label], compiled, _ = common.compiled_thunk(h.vmapped, *h.vmapped_args)
        harnesses[label], ops[label] = (spec, h.impl), hlo_ops(compiled.as_text())
    t, mm = common.time_with_matmul(thunks, config.matmul_sizes, reps=reps)
    peak = mm["gflops"] * 1e9
    rows, summary = [], []
    for label, (spec, impl) in harnesses.items():
        per_op = profile_ops(thunks[label], config.profiled_calls)
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
        summary.append(
            {
                "workload": label,
                "round_impl": impl,
                "round_s": round_s,
                "profiled_op_s": profiled,
                "dot_share": dot_share,
                "frac_unavoidable": unavoidable / round_s / peak,
                "dot_ceiling": unavoidable / (dot_share * round_s) / peak,
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
    ("dot_ceiling", "ceiling (dots only)", ".2f"),
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


def notes(config: Config, result: dict, env: dict) -> list[str]:
    return [
        f"matmul reference: {result['matmul']['gflops']:.1f} GFLOP/s"
        f" (best of {config.matmul_sizes}); {config.profiled_calls} profiled calls per workload.",
        "ceiling: unavoidable FLOPs / (dots' share x round time) / matmul: the round with every"
        " op but its dots free.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main(sys.argv[1:])
