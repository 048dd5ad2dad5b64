"""Benchmarks of abo-jax against the usual ways of doing the same work (issue 7).

Each benchmark is a module, ``python -m experiments.bench.<name> [--quick] [--out DIR]``, that
prints a table and writes ``<out>/<name>.json``; ``python -m experiments.bench`` lists and runs
them. One timing harness (:mod:`~experiments.bench.common`: variants side by side in one process,
ratios reported); one round under test (:mod:`~experiments.bench.workload`, built from abo_jax's
values), whose variants are its own arguments.
"""
