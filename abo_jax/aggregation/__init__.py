"""Aggregation-broadcast operators (ABOs) for stacked LoRA factors; one module per family."""

from abo_jax.aggregation._base import (
    ABO,
    Broadcast,
    EmptyState,
    all_finite,
    broadcast_to_clients,
    is_concrete,
    make_abo,
    num_clients,
    tree_bytes_per_client,
    validate_clients,
    validate_weights,
    weighted_sum,
)
from abo_jax.aggregation.product_sum import product_sum
from abo_jax.aggregation.sum_product import sp_svd, stacked_svd, sum_product

__all__ = [
    "ABO",
    "Broadcast",
    "EmptyState",
    "all_finite",
    "broadcast_to_clients",
    "is_concrete",
    "make_abo",
    "num_clients",
    "tree_bytes_per_client",
    "validate_clients",
    "validate_weights",
    "weighted_sum",
    "product_sum",
    "sum_product",
    "sp_svd",
    "stacked_svd",
]
