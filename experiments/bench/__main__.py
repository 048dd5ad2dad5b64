"""Runs every benchmark: ``python -m experiments.bench [--quick] [--out DIR] [--only NAME ...]``."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

from experiments.bench.common import DEFAULT_OUT
from experiments.common.config import CliParser

BENCHMARKS = (
    "sp_aggregation",  # 4
    "round_throughput",  # 1
    "vmap_vs_loop",  # 2
    "vs_torch",  # 3
    "memory",  # 5
    "sharding",  # 6
    "paper_grid",  # 7 (about 10 minutes: a Fashion-MNIST sub-grid per variant)
)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m experiments.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that each runs")
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
        choices=BENCHMARKS,
        default=None,
        metavar="NAME",
        help=f"run only these benchmarks, of: {', '.join(BENCHMARKS)} (default: all)",
    )
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: {str(args.out)!r} exists and is not a folder")
    failed = []
    for name in args.only or BENCHMARKS:
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
