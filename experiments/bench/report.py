"""Markdown tables of the benchmark results: ``python -m experiments.bench.report [--out DIR]``.

Reads the ``<name>.json`` files the benchmarks wrote to ``DIR`` (default ``results/bench``) and
prints one Markdown section per benchmark (for RESULTS.md and the README's performance section).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.bench.common import DEFAULT_OUT


def _md(rows: list[dict], columns: list[tuple[str, str, str | None]]) -> str:
    def cell(v, spec):
        if v is None:
            return "-"
        if spec and isinstance(v, (int, float)) and not isinstance(v, bool):
            return format(v, spec)
        return str(v)

    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r.get(k), s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)


def _header(data: dict) -> str:
    env = data.get("env", {})
    return (
        f"_{env.get('date_utc', '?')}, {env.get('cpu', '?')}, nproc {env.get('nproc', '?')},"
        f" {env.get('backend', '?')}, jax {env.get('jax', '?')}"
        + (f", torch {data['torch_version']}" if "torch_version" in data else "")
        + (", --quick (not figures)" if data.get("quick") else "")
        + "_"
    )


def section(name: str, data: dict) -> str:
    if "skipped" in data:
        return f"### {name}\n\nskipped: {data['skipped']}\n"
    out = [f"### {name}", "", _header(data), ""]
    if name == "sp_aggregation":
        out.append(
            _md(
                data["rows"],
                [
                    ("d", "d = k", None),
                    ("m", "m", None),
                    ("r", "r", None),
                    ("stacked_s", "stacked [s]", ".2e"),
                    ("sp_abo_s", "SP ABO [s]", ".2e"),
                    ("dense_s", "dense SVD [s]", ".3g"),
                    ("speedup", "dense / stacked", ".0f"),
                    ("sv_rel_err", "sv rel err", ".1e"),
                    ("product_rel_err", "rank-r rel err", ".1e"),
                ],
            )
        )
    elif name == "round_throughput":
        out.append(
            _md(
                data["rows"],
                [
                    ("variant", "variant", None),
                    ("round_s", "round [s]", ".3g"),
                    ("gflops_unavoidable", "GFLOP/s (unavoidable)", ".1f"),
                    ("gflops_naive", "GFLOP/s (naive)", ".1f"),
                    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
                    ("frac_unavoidable", "unavoidable / matmul", ".2f"),
                    ("frac_naive", "naive / matmul", ".2f"),
                    ("compile_s", "compile [s]", ".1f"),
                ],
            )
        )
    elif name == "vmap_vs_loop":
        out.append(
            _md(
                data["rows"],
                [
                    ("m", "m", None),
                    ("vmapped_s", "vmapped [s]", ".3g"),
                    ("loop_update_s", "(a) loop of updates [s]", ".3g"),
                    ("loop_step_s", "(b) loop of steps [s]", ".3g"),
                    ("speedup_a", "vs (a)", ".1f"),
                    ("speedup_b", "vs (b)", ".1f"),
                    ("scanned_s", "sim.rounds [s/round]", ".3g"),
                    ("speedup_a_scanned", "vs (a), scanned", ".1f"),
                    ("speedup_b_scanned", "vs (b), scanned", ".1f"),
                    ("vmapped_gflops_unavoidable", "GFLOP/s (unavoidable)", ".1f"),
                    ("vmapped_gflops_naive", "GFLOP/s (naive)", ".1f"),
                    ("matmul_gflops", "matmul GFLOP/s", ".1f"),
                ],
            )
        )
    elif name == "vs_torch":
        out.append(
            _md(
                data["rows"],
                [
                    ("m", "m", None),
                    ("abo_jax_s", "abo-jax [s]", ".3g"),
                    ("torch_s", "PyTorch [s]", ".3g"),
                    ("torch_1thread_s", "PyTorch 1 thread [s]", ".3g"),
                    ("speedup", "speedup (vs faster torch)", ".1f"),
                ],
            )
        )
    elif name == "memory":
        out.append(
            _md(
                data["summary"],
                [
                    ("model", "model", None),
                    ("variant", "variant", None),
                    ("bytes_per_client", "bytes / client", ".4g"),
                    ("data_bytes", "data (+cache) / client", None),
                    ("trainable_with_momentum_bytes", "LoRA+bias+momentum / client", None),
                    ("base_weights_bytes", "base weights", None),
                    ("per_client_over_base", "(bytes/client) / base", ".3f"),
                ],
            )
        )
        out += [
            "",
            _md(
                data["rows"],
                [
                    ("model", "model", None),
                    ("variant", "variant", None),
                    ("m", "m", None),
                    ("argument_bytes", "arguments [B]", ".3e"),
                    ("temp_bytes", "temporaries [B]", ".3e"),
                    ("peak_bytes", "peak [B]", ".3e"),
                ],
            ),
        ]
    elif name == "sharding":
        out.append(
            _md(
                data["rows"],
                [
                    ("devices", "devices", None),
                    ("round_s", "round [s]", ".3g"),
                    ("scaling", "t(1) / t(N)", ".2f"),
                    ("max_rel_diff_vs_1", "max rel diff vs 1 device", ".1e"),
                    ("same_numbers", "same", None),
                ],
            )
        )
    out += ["", f"targets: `{json.dumps(data.get('targets'))}`", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from experiments.bench.__main__ import BENCHMARKS

    for name in BENCHMARKS:
        path = args.out / f"{name}.json"
        if path.exists():
            print(section(name, json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
