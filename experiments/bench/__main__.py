"""Runs every benchmark: ``python -m experiments.bench [--quick] [--out DIR] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from experiments.bench.common import DEFAULT_OUT

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
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    args = p.parse_args(argv)
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
