"""abo-jax: LoRA-enabled federated learning in JAX.

Pure-function LoRA layers, aggregation-broadcast operators (ABOs), and a federated round built from
values (vmapped over clients, wrapped for runs, meshes and jit). The top level holds the user's
vocabulary (what the README and the notebooks use); the rest lives in the submodules
:mod:`abo_jax.lora`, :mod:`abo_jax.models`, :mod:`abo_jax.aggregation`, :mod:`abo_jax.data`,
:mod:`abo_jax.simulation` and :mod:`abo_jax.linalg` (``abo_jax.linalg.svd``: the SVD to use on
CPU). The convergence theory lives in the separate ``theory`` package (which imports ``abo_jax``).

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from abo_jax import aggregation, data, distributed, linalg, lora, models, simulation
from abo_jax.aggregation import (
    ABO,
    OPERATORS,
    Broadcast,
    Traits,
    fedavg_full,
    fedex,
    fedsa,
    ffa,
    flexlora,
    flora,
    hetlora,
    make_abo,
    make_operator,
    product_sum,
    rbla,
    rolora,
    sum_product,
)
from abo_jax.data import (
    ClientData,
    client_weights,
    dirichlet,
    iid,
    load_dataset,
    load_digits,
    one_class_per_client,
    pad_clients,
)
from abo_jax.distributed import distributed_from_env
from abo_jax.lora import LoRAFactors, apply_lora, init_lora, is_lora, lora_delta, merge_lora
from abo_jax.models import (
    Model,
    Trainable,
    bert_lora_model,
    flax_lora_model,
    load_minilm,
    paper_mlp,
    paper_mlp_ranks,
)
from abo_jax.simulation import (
    CheckpointError,
    FederatedRound,
    SimState,
    client_groups,
    client_update,
    federated_round,
    jit_round,
    make_simulation,
    on_mesh,
    over_runs,
    paper_sgd,
    run,
    scan_rounds,
    streamed_groups,
    uniform_sampling,
)

__version__ = "0.1.0"

__all__ = [
    # LoRA
    "LoRAFactors",
    "init_lora",
    "apply_lora",
    "merge_lora",
    "lora_delta",
    "is_lora",
    # models
    "Model",
    "Trainable",
    "paper_mlp",
    "paper_mlp_ranks",
    "flax_lora_model",
    "bert_lora_model",
    "load_minilm",
    # operators
    "ABO",
    "Broadcast",
    "Traits",
    "make_abo",
    "OPERATORS",
    "make_operator",
    "sum_product",
    "product_sum",
    "fedex",
    "flora",
    "ffa",
    "rolora",
    "fedsa",
    "hetlora",
    "rbla",
    "flexlora",
    "fedavg_full",
    # data
    "ClientData",
    "load_digits",
    "load_dataset",
    "one_class_per_client",
    "dirichlet",
    "iid",
    "pad_clients",
    "client_weights",
    # the round
    "federated_round",
    "FederatedRound",
    "SimState",
    "over_runs",
    "on_mesh",
    "jit_round",
    "scan_rounds",
    "client_groups",
    "streamed_groups",
    "client_update",
    "paper_sgd",
    "uniform_sampling",
    "make_simulation",
    "run",
    "CheckpointError",
    "distributed_from_env",
    # submodules
    "aggregation",
    "data",
    "distributed",
    "linalg",
    "lora",
    "models",
    "simulation",
]
