"""Which vmapped round the benchmarks time.

``vmapped_round(spec)`` returns the round under test as a jittable function of a prepared problem.
Until ``abo_jax.simulation`` provides its jitted round, it is the bench's own reference round
(:func:`experiments.bench.workload.vmapped_round`, built from ``abo_jax.lora`` + optax + the ABO),
and every output says so.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax

from experiments.bench import workload as W


class RoundUnderTest(NamedTuple):
    fn: Callable[[Any], Any]  # jitted: prepared problem -> (global trainable, losses)
    prepare: Callable[[W.Problem], Any]  # Problem -> the argument of fn
    impl: str  # "bench" or "abo_jax.simulation"


def vmapped_round(spec: W.RoundSpec, *, cache_first: bool = False, abo=None) -> RoundUnderTest:
    """The round to benchmark.

    Args:
      cache_first: the bench's round with the first layer's ``x @ W0_1.T`` computed once per run and
        reused (an experiment measuring DESIGN.md's "work that is never needed").
    """
    fn = jax.jit(partial(W.vmapped_round, spec, abo=abo))
    prepare = W.cache_first_layer if cache_first else (lambda p: p)
    return RoundUnderTest(fn, prepare, "bench")


def describe(impl: str | None) -> str:
    if impl == "bench":
        return (
            "the bench's own reference round (experiments/bench/workload.py: one-client update from"
            " abo_jax.lora + optax, jax.vmap over clients, PS via abo_jax.product_sum, one jax.jit)"
        )
    return str(impl)
