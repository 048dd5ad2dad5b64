"""Data for federated simulation: loaders, partitioners, padding and masked per-client epochs.

Typical use (numpy on the host, then jax arrays with fixed shapes)::

    ds = load_dataset("digits", flatten=True, normalization="standardize")
    part = one_class_per_client(ds.y_train, key=jax.random.key(0))
    data = pad_clients(ds.x_train, ds.y_train, part)          # ClientData (m, n_max, ...)
    weights = client_weights(data.sizes)                      # p_i = n_i / sum n
    keys = jax.random.split(jax.random.key(1), part.num_clients)
    idx, valid = jax.vmap(epoch_batches, in_axes=(0, 0, None))(keys, data.mask, 64)
"""

from abo_jax.data._datasets import (
    DATASET_NAMES,
    NORMALIZATIONS,
    PAPER_NORMALIZATION,
    Dataset,
    load_dataset,
    load_digits,
    normalization_constants,
    normalize,
    stratified_split,
)
from abo_jax.data._idx import (
    MNIST_FAMILY,
    load_idx,
    load_mnist_family,
    mnist_family_directory,
)
from abo_jax.data._padding import client_weights, epoch_batches, num_batches, pad_clients
from abo_jax.data._partition import (
    Partition,
    dirichlet,
    iid,
    make_partition,
    one_class_per_client,
    quantity_skew,
    shards,
)
from abo_jax.data.client_data import ClientData
from abo_jax.data.fortunes import (
    FORTUNES_DIR,
    PARTITION_SCHEMES,
    TextClients,
    TextDataset,
    fortunes_clients,
    load_fortunes,
    partition_topics,
    read_fortune_file,
)

__all__ = [
    "ClientData",
    "Dataset",
    "DATASET_NAMES",
    "load_dataset",
    "load_digits",
    "stratified_split",
    "normalize",
    "normalization_constants",
    "NORMALIZATIONS",
    "PAPER_NORMALIZATION",
    "load_idx",
    "load_mnist_family",
    "mnist_family_directory",
    "MNIST_FAMILY",
    "Partition",
    "make_partition",
    "one_class_per_client",
    "shards",
    "dirichlet",
    "iid",
    "quantity_skew",
    "TextDataset",
    "TextClients",
    "load_fortunes",
    "read_fortune_file",
    "partition_topics",
    "fortunes_clients",
    "PARTITION_SCHEMES",
    "FORTUNES_DIR",
    "pad_clients",
    "client_weights",
    "epoch_batches",
    "num_batches",
]
