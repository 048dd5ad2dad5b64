"""Aggregation-broadcast operators (ABOs) for stacked LoRA factors; one module per family.

Every operator is a factory returning ``ABO(init, aggregate)``::

    state = abo.init(clients, key=key)
    broadcast, state, diagnostics = abo.aggregate(clients, weights, state)

Global: :func:`sum_product` (SP), :func:`product_sum` (PS), :func:`fedex` (FedEx-LoRA),
:func:`flora` (FLoRA), :func:`ffa` (FFA-LoRA), :func:`rolora` (RoLoRA). Personalized:
:func:`fedsa` (FedSA-LoRA). Heterogeneous ranks: :func:`hetlora`, :func:`rbla`, :func:`flexlora`.
Reference: :func:`fedavg_full` (FedAvg of full weights) with :func:`merge_clients`,
:func:`merge_broadcast` and :func:`fedavg_gap`.
"""

from abo_jax.aggregation._base import (
    ABO,
    Broadcast,
    EmptyState,
    LayerResult,
    Traits,
    aggregate_layers,
    all_finite,
    broadcast_to_clients,
    check_broadcast_form,
    freeze_factors,
    is_concrete,
    make_abo,
    num_clients,
    stack_layer_diags,
    trainable_factors,
    tree_bytes_per_client,
    validate_clients,
    validate_weights,
    weighted_sum,
    weights_diagnostics,
)
from abo_jax.aggregation._streamed import Streamed, linear_streamed
from abo_jax.aggregation.fedavg import fedavg_full, fedavg_gap, merge_broadcast, merge_clients
from abo_jax.aggregation.fedex import fedex
from abo_jax.aggregation.fedsa import fedsa
from abo_jax.aggregation.ffa import FFAState, ffa
from abo_jax.aggregation.flora import FLoRAState, flora
from abo_jax.aggregation.heterogeneous import flexlora, hetlora, rbla
from abo_jax.aggregation.product_sum import product_sum
from abo_jax.aggregation.registry import LORA_OPERATORS, OPERATORS, RANKED_OPERATORS, make_operator
from abo_jax.aggregation.rolora import RoLoRAState, rolora, rolora_trainable
from abo_jax.aggregation.sum_product import (
    sp_svd,
    split_svd,
    stacked_svd,
    sum_product,
    svd_from_stacked,
)

__all__ = [
    "Streamed",
    "linear_streamed",
    "stack_layer_diags",
    "check_broadcast_form",
    "ABO",
    "Traits",
    "Broadcast",
    "EmptyState",
    "LayerResult",
    "aggregate_layers",
    "all_finite",
    "broadcast_to_clients",
    "freeze_factors",
    "is_concrete",
    "make_abo",
    "num_clients",
    "trainable_factors",
    "tree_bytes_per_client",
    "validate_clients",
    "validate_weights",
    "weighted_sum",
    "weights_diagnostics",
    "product_sum",
    "OPERATORS",
    "LORA_OPERATORS",
    "RANKED_OPERATORS",
    "make_operator",
    "sum_product",
    "sp_svd",
    "stacked_svd",
    "svd_from_stacked",
    "split_svd",
    "fedex",
    "flora",
    "FLoRAState",
    "ffa",
    "FFAState",
    "rolora",
    "RoLoRAState",
    "rolora_trainable",
    "fedsa",
    "hetlora",
    "rbla",
    "flexlora",
    "fedavg_full",
    "merge_clients",
    "merge_broadcast",
    "fedavg_gap",
]
