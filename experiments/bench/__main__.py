"""Runs the benchmarks: ``python -m experiments.bench [--quick] [--out DIR] [--only NAME ...]``.

Each benchmark is also a module of its own, ``python -m experiments.bench.<name> --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from experiments.bench.common import DEFAULT_OUT

#: name -> what it measures. The numbered ones run by default, in this order (RESULTS.md).
BENCHMARKS = {
    "sp_aggregation": "4: SP from the stacked factors vs the dense SVD",
    "round_throughput": "1: the paper round's FLOP/s vs the matmul's",
    "vmap_vs_loop": "2: the vmapped round vs per-client loops",
    "vs_torch": "3: the round vs a PyTorch eager round (needs torch)",
    "memory": "5: the round's planned peak memory per client",
    "sharding": "6: the round on 1, 2, 4, 8 CPU devices, same numbers",
    "paper_grid": "7: the paper grid's wall time from a sub-grid (about 10 minutes)",
    "profile_round": "where the round's time goes, by kind of op (not run by default)",
    "variants": "variants of the round side by side, --suite (not run by default)",
    "vs_fedjax": "abo-jax vs FedJAX, full-weight FedAvg, benchmark 8 (needs fedjax; not by default)",
    "vs_peft": "MiniLM's LoRA round vs PyTorch + peft, benchmark 9 (needs peft; not by default)",
    "multiprocess": "1 process x 2 devices vs 2 processes x 1 device, benchmark 10 (not by default)",
    "million": "a million clients in one round, benchmark 11 (about 10 minutes, 9 GB; not by default)",
}
DEFAULT = tuple(name for name, what in BENCHMARKS.items() if what[0].isdigit())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # two short lines, exit 2
        self.exit(2, f"usage: {self.prog} [options] (see --help)\n{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    listing = "\n".join(f"  {name:18} {what}" for name, what in BENCHMARKS.items())
    p = _Parser(
        prog="python -m experiments.bench",
        description=__doc__.split("\n")[0],
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that each one runs")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the JSON results (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=tuple(BENCHMARKS),
        default=None,
        metavar="NAME",
        help=f"run only these benchmarks (default: {', '.join(DEFAULT)})",
    )
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: {str(args.out)!r} exists and is not a folder")
    failed = []
    for name in args.only or DEFAULT:
        t0 = time.perf_counter()
        module = importlib.import_module(f"experiments.bench.{name}")
        try:
            module.main([*(["--quick"] if args.quick else []), "--out", str(args.out)])
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
        print(f"-- {name}: {time.perf_counter() - t0:.0f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
