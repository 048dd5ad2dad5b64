"""Reference models with LoRA targets: the paper's MLP, any flax model through the LoRA spec, and a
pretrained BERT encoder (all-MiniLM-L6-v2) with factored LoRA."""

from abo_jax.models._base import Model, Trainable, fold_base_delta
from abo_jax.models.bert import BERT_TARGETS, BertConfig, bert_lora_model, random_bert_params
from abo_jax.models.flax_model import bias_leaves, flax_lora_model
from abo_jax.models.minilm import MINILM_INSTALL, load_minilm, tokenize
from abo_jax.models.mlp import paper_mlp, paper_mlp_ranks

__all__ = [
    "Model",
    "Trainable",
    "fold_base_delta",
    "paper_mlp",
    "paper_mlp_ranks",
    "flax_lora_model",
    "bias_leaves",
    "BertConfig",
    "BERT_TARGETS",
    "bert_lora_model",
    "random_bert_params",
    "load_minilm",
    "tokenize",
    "MINILM_INSTALL",
]
