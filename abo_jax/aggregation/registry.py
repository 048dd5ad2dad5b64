"""Every operator of abo_jax by name: the one registry that ``theory`` and the experiments read.

Reference: Chen et al., arXiv:2508.01348 (SP, PS); the others' papers are cited by their factories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abo_jax.aggregation._base import ABO
from abo_jax.aggregation.fedavg import fedavg_full
from abo_jax.aggregation.fedex import fedex
from abo_jax.aggregation.fedsa import fedsa
from abo_jax.aggregation.ffa import ffa
from abo_jax.aggregation.flora import flora
from abo_jax.aggregation.heterogeneous import flexlora, hetlora, rbla
from abo_jax.aggregation.product_sum import product_sum
from abo_jax.aggregation.rolora import rolora
from abo_jax.aggregation.sum_product import sum_product

__all__ = ["LORA_OPERATORS", "RANKED_OPERATORS", "OPERATORS", "make_operator"]

#: factories of the operators on LoRA factors, by name, in the order reports list them
LORA_OPERATORS: dict[str, Callable[..., ABO]] = {
    "sum_product": sum_product,
    "product_sum": product_sum,
    "fedex": fedex,
    "flora": flora,
    "ffa": ffa,
    "rolora": rolora,
    "fedsa": fedsa,
    "hetlora": hetlora,
    "rbla": rbla,
    "flexlora": flexlora,
}

#: the factories of :data:`LORA_OPERATORS` that need ``client_ranks`` (heterogeneous ranks)
RANKED_OPERATORS: tuple[str, ...] = ("hetlora", "rbla", "flexlora")

#: every operator: :data:`LORA_OPERATORS` and the full-weight reference ``fedavg_full``
OPERATORS: dict[str, Callable[..., ABO]] = {**LORA_OPERATORS, "fedavg_full": fedavg_full}


def make_operator(name: str, *, client_ranks: Any = None, **kwargs: Any) -> ABO:
    """The operator ``name`` of :data:`OPERATORS`, built with ``kwargs``.

    Args:
      name: a key of :data:`OPERATORS` (e.g. ``"sum_product"``).
      client_ranks: ``(m,)`` ranks, required by the operators of :data:`RANKED_OPERATORS` (and
        refused by the others).
      **kwargs: the factory's other arguments (e.g. ``alpha=``, ``scale=``).

    Raises:
      ValueError: an unknown name (the known ones listed), or ranks missing / not taken.
    """
    if name not in OPERATORS:
        raise ValueError(f"operator: unknown {name!r}; expected one of {', '.join(OPERATORS)}")
    factory = OPERATORS[name]
    if name in RANKED_OPERATORS:
        if client_ranks is None:
            raise ValueError(f"operator {name!r}: needs client_ranks (one rank per client)")
        return factory(client_ranks, **kwargs)
    if client_ranks is not None:
        raise ValueError(f"operator {name!r}: takes no client_ranks (all clients share one rank)")
    return factory(**kwargs)
