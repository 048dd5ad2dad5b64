"""``python -m experiments.paper``: the paper's grid (see experiments/paper/run.py)."""

from experiments.paper.run import main

if __name__ == "__main__":
    main()
