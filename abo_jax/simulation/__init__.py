"""The vmapped federated simulator: one-client update, jitted round, client sampling, runs.

Typical use (the paper's protocol on digits)::

    import jax, abo_jax as aj

    ds = aj.load_digits(flatten=True)
    part = aj.one_class_per_client(ds.y_train, key=jax.random.key(0))
    data = aj.pad_clients(ds.x_train, ds.y_train, part)             # ClientData (m, n_max, ...)
    model = aj.paper_mlp(64, (200, 200), 10, ranks=aj.paper_mlp_ranks(0.07))
    sim = aj.make_simulation(model, aj.sum_product(), local_epochs=1)  # paper_sgd() by default
    history, state = aj.run(sim, data, (ds.x_test, ds.y_test), rounds=20, key=jax.random.key(1))
    history["test_accuracy"]                                          # (rounds,)

Design choices:

* The round is ``jax.jit`` of one pure function of ``(state, data, inputs)``; everything that varies
  across rounds lives in :class:`SimState`, so it is traced once.
* Local training is :func:`client_update` for one client, ``jax.vmap``-ed with the frozen base
  broadcast (``in_axes=None``). Non-sampled clients are trained too (fixed shapes) and their result
  discarded: they keep their start and get weight 0.
* ``Trainable.lora`` goes through the ABO; ``Trainable.extra`` (biases) is averaged with the plain
  weighted mean; ``broadcast.base_delta`` is folded into the frozen base by ``model.fold``.
* The global model evaluated each round is :func:`global_trainable` (``eval_mode="global"``): the
  broadcast itself for global operators, the weighted mean of personal factors for FedSA-LoRA;
  ``eval_mode="personalized"`` averages every client's own model's accuracy instead.
* Runs resume from atomic checkpoints with identical numbers: all randomness comes from the key in
  the state.

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
from abo_jax.simulation.evaluation import global_trainable, make_evaluate
from abo_jax.simulation.federated import (
    FederatedRound,
    SimState,
    client_groups,
    federated_round,
    vmap_clients,
)
from abo_jax.simulation.round import Simulation, make_simulation
from abo_jax.simulation.run import run
from abo_jax.simulation.sampling import (
    ClientSampling,
    bernoulli_sampling,
    full_participation,
    participation_weights,
    uniform_sampling,
)
from abo_jax.simulation.wrappers import jit_round, on_mesh, over_runs, scan_rounds

__all__ = [
    "ClientUpdate",
    "client_update",
    "lora_train_mask",
    "masked_cross_entropy",
    "paper_sgd",
    "SimState",
    "FederatedRound",
    "federated_round",
    "vmap_clients",
    "client_groups",
    "over_runs",
    "on_mesh",
    "jit_round",
    "scan_rounds",
    "make_evaluate",
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
