"""``python -m experiments.finetune``: federated LoRA fine-tuning (see experiments/finetune/run.py)."""

import sys

from experiments.common.cli import run_cli
from experiments.finetune.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m experiments.finetune"))
