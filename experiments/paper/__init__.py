"""Reproduction of the paper's Figure 1 (arXiv:2508.01348): SP vs PS over rank ratio and epochs."""

import experiments.common  # noqa: F401  (caps OpenBLAS threads before numpy/jax load it)
