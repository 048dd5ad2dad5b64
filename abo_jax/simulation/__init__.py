"""The vmapped federated simulator: one-client update, jitted round, client sampling, runs.

Reference: Chen et al., arXiv:2508.01348.
"""

from abo_jax.simulation.checkpoint import load_checkpoint, save_checkpoint
from abo_jax.simulation.client import (
    ClientUpdate,
    client_update,
    lora_train_mask,
    masked_cross_entropy,
    paper_sgd,
)
from abo_jax.simulation.round import SimState, Simulation, global_trainable, make_simulation
from abo_jax.simulation.run import run
from abo_jax.simulation.sampling import (
    ClientSampling,
    bernoulli_sampling,
    full_participation,
    participation_weights,
    uniform_sampling,
)

__all__ = [
    "ClientUpdate",
    "client_update",
    "lora_train_mask",
    "masked_cross_entropy",
    "paper_sgd",
    "SimState",
    "Simulation",
    "make_simulation",
    "global_trainable",
    "run",
    "ClientSampling",
    "full_participation",
    "uniform_sampling",
    "bernoulli_sampling",
    "participation_weights",
    "save_checkpoint",
    "load_checkpoint",
]
