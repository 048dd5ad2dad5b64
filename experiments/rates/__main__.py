"""``python -m experiments.rates``: eta sweep and rate in T (see experiments/rates/run.py)."""

import sys

from experiments.common.cli import run_cli
from experiments.rates.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m experiments.rates"))
