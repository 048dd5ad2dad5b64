"""Benchmarks of abo-jax against the usual ways of doing the same work (issue 7).

Each benchmark is a module runnable as ``python -m experiments.bench.<name> [--quick] [--out DIR]``
that prints a table and writes ``<out>/<name>.json``; ``python -m experiments.bench`` runs them all.
Variants are compared side by side in one process (see :mod:`experiments.bench.common`).
"""
