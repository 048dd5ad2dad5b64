"""Federated LoRA fine-tuning of pretrained MiniLM-L6 on fortunes topics, every operator."""

import experiments.common  # noqa: F401  (caps OpenBLAS threads before numpy/jax load it)
