"""Strict numerics for the whole suite (see STYLE.md): float64, rank promotion raises."""

import os

# Before jax (and the LAPACK behind it) loads: one OpenBLAS thread per LAPACK call (its own pool
# oversubscribes a 2-core machine and turns sub-millisecond QR/SVD calls into seconds), and cheaper
# XLA compilation (the suite is dominated by compiling many small programs, not by running them).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Hypothesis profiles: "ci" (fast, default) and "thorough" (ABO_HYPOTHESIS_PROFILE=thorough).
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("ABO_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
