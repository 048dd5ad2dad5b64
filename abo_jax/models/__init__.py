"""Reference models with LoRA targets: the paper's MLP and any flax model through the LoRA spec."""

from abo_jax.models._base import Model, Trainable, fold_base_delta
from abo_jax.models.flax_model import bias_leaves, flax_lora_model
from abo_jax.models.mlp import paper_mlp, paper_mlp_ranks

__all__ = [
    "Model",
    "Trainable",
    "fold_base_delta",
    "paper_mlp",
    "paper_mlp_ranks",
    "flax_lora_model",
    "bias_leaves",
]
