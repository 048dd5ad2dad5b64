"""The main job (``make demo``): the paper's claim on the bundled digits data, in a few minutes.

1. A reduced Figure-1 grid (rank ratio x local epochs) for SP and PS with 3 seeds, on
   scikit-learn's digits (10 clients, one class each), with heatmaps, convergence curves and the
   per-round mismatch terms.
2. The claim verdict (SP more rank-sensitive, PS more epoch-sensitive) with its evidence.
3. ``theory.certify`` tables for SP and PS (their weak/strong conditions, without training).
4. Where everything was written, and the command for the full reproduction on Fashion-MNIST.

Reference: Chen et al., arXiv:2508.01348.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from experiments.common.config import CliParser
from experiments.common.datasets import dataset_available
from experiments.common.io import atomic_write_json, atomic_write_text
from experiments.common.progress import log
from experiments.paper.config import get_demo_config, get_quick_config
from experiments.paper.run import print_report, run_paper

FULL_COMMAND = "python -m experiments.paper --datasets fashion_mnist"
SUBGRID_COMMAND = (
    "python -m experiments.paper --datasets fashion_mnist --deltas 0.01,0.04,0.07 --epochs 1,10"
)


def certify_tables(names=("sum_product", "product_sum")) -> dict[str, str]:
    """``theory.certify(name).table()`` per operator (a note when theory is not installed yet)."""
    try:
        from theory.certify import certify
    except ImportError as err:  # theory lands separately; the demo still runs without it
        return {n: f"(theory.certify unavailable: {err})" for n in names}
    out = {}
    for n in names:
        try:
            out[n] = certify(n).table()
        except Exception as err:  # report, never hide, a failing certification
            out[n] = f"(certify({n!r}) failed: {type(err).__name__}: {err})"
    return out


def main(argv=None) -> dict:
    parser = CliParser(prog="python -m experiments.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid (smoke test)")
    parser.add_argument(
        "--out", default="results", help="results root folder (default: results)", metavar="DIR"
    )
    parser.add_argument("--no-certify", action="store_true", help="skip the certify tables")
    parser.add_argument("--no-progress", action="store_true", help="draw no progress bars")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out: {args.out!r} exists and is not a folder")
    cfg = get_quick_config() if args.quick else get_demo_config()
    cfg = dataclasses.replace(
        cfg,
        out=args.out,
        name=("demo-quick" if args.quick else "demo"),
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    log("== abo-jax demo: SP vs PS on the bundled digits (arXiv:2508.01348, Figure 1) ==")
    log(
        f"grid: delta {cfg.deltas} x E {cfg.epochs}, rounds = {cfg.base_rounds}/E x "
        f"{cfg.rounds_scale}, {cfg.seeds} seeds, operators {cfg.operators}"
    )
    result = run_paper(cfg)
    print_report(cfg, result)
    tables = {} if args.no_certify else certify_tables()
    for name, table in tables.items():
        log(f"\n-- theory.certify({name!r}) --\n{table}")
    folder = result["folder"]
    if tables:
        atomic_write_text(
            folder / "certify.txt",
            "\n\n".join(f"theory.certify({n!r})\n{t}" for n, t in tables.items()),
        )
    wall = time.perf_counter() - t0
    atomic_write_json(folder / "demo.json", {"wall_seconds": wall, "verdict": result["verdict"]})
    log(f"\nresults (CSV, JSON, PNG) in {folder.resolve()}  [{wall:.0f} s]")
    for p in result["plots"]:
        log(f"  {p}")
    if dataset_available("fashion_mnist"):
        log(
            "\nFashion-MNIST is installed. Full reproduction (7 x 5 grid, 300/E rounds, 3 seeds; "
            f"hours on 2 CPU cores):\n  {FULL_COMMAND}\nA sub-grid for the claim:\n  "
            f"{SUBGRID_COMMAND}"
        )
    else:
        log(
            "\nFor the full reproduction install Fashion-MNIST "
            "(apt-get install dataset-fashion-mnist) and run:\n  " + FULL_COMMAND
        )
    return {**result, "certify": tables, "wall_seconds": wall}


if __name__ == "__main__":
    from experiments.common.cli import run_cli

    sys.exit(run_cli(main, "python -m experiments.demo", sys.argv[1:]))
