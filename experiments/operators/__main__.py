"""``python -m experiments.operators``: the operator zoo (see experiments/operators/run.py)."""

import sys

from experiments.common.cli import run_cli
from experiments.operators.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m experiments.operators"))
