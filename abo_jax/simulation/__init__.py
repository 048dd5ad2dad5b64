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

The round as values (``make_simulation`` composes them in one call)::

    rnd = aj.federated_round(model, aj.sum_product(), client_update=aj.client_update)
    rnd = aj.jit_round(aj.over_runs(rnd, 3))                         # 3 seeds, one program
    history, state = aj.run(rnd, data, test, rounds=20, key=jax.random.key(1))

Design choices:

* A round is a :class:`FederatedRound` of pure functions of one run; :func:`over_runs`,
  :func:`on_mesh`, :func:`jit_round` and :func:`scan_rounds` take a round and return one, and
  :func:`client_groups` and :func:`streamed_groups` (which aggregates each group as it finishes)
  are ``map_clients`` values. A jitted round is traced once: everything that
  varies across rounds lives in :class:`SimState`.
* Local training is :func:`client_update` for one client (or any function with its signature,
  passed as ``client_update=``), ``jax.vmap``-ed with the frozen base shared (``in_axes=None``).
  Non-sampled clients are trained too (fixed shapes) and their result discarded, unless a
  fixed-count sampler lets the round train only the sampled ones.
* The whole :class:`~abo_jax.Trainable` tree goes through the ABO (biases FedAvg-ed by it);
  ``broadcast.base_delta`` is folded into the frozen base by ``model.fold``.
* What the round needs to know about the operator it reads from ``abo.traits``
  (:class:`~abo_jax.Traits`): which factors train, whether the base moves, whether the broadcast is
  personal (then each client's own model is evaluated), the ranks and scales.
* Runs resume from checkpoints with identical numbers: all randomness comes from the key in the
  state.

Reference: Chen et al., arXiv:2508.01348.
"""

from abo_jax.simulation.checkpoint import (
    CheckpointError,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from abo_jax.simulation.client import (
    ClientUpdate,
    client_update,
    lora_train_mask,
    masked_cross_entropy,
    paper_sgd,
)
from abo_jax.simulation.client_map import auto_clients
from abo_jax.simulation.evaluation import global_trainable, make_evaluate
from abo_jax.simulation.federated import (
    FederatedRound,
    SimState,
    client_groups,
    federated_round,
    streamed_groups,
    vmap_clients,
)
from abo_jax.simulation.round import Simulation, make_simulation
from abo_jax.simulation.run import NonFiniteError, run
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
    "auto_clients",
    "streamed_groups",
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
    "CheckpointError",
    "NonFiniteError",
    "run_fingerprint",
]
