"""``python -m experiments.operators``: the operator zoo (see experiments/operators/run.py)."""

from experiments.operators.run import main

if __name__ == "__main__":
    main()
