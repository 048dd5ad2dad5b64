"""``python -m experiments.rates``: eta sweep and rate in T (see experiments/rates/run.py)."""

from experiments.rates.run import main

if __name__ == "__main__":
    main()
