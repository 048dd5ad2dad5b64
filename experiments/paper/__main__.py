"""``python -m experiments.paper``: the paper's grid (see experiments/paper/run.py)."""

import sys

from experiments.common.cli import run_cli
from experiments.paper.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m experiments.paper"))
