"""Small synthetic federated problems (shared by the tests and the subprocess script)."""

import jax.numpy as jnp
import numpy as np

from abo_jax.data.client_data import ClientData


def synthetic_clients(rng, sizes, feat=6, classes=3, n_max=None, same=False):
    """Padded ClientData with Gaussian inputs and random labels; ``same`` repeats client 0."""
    sizes = np.asarray(sizes)
    m, n_max = len(sizes), int(n_max or sizes.max())
    x = rng.normal(size=(m, n_max, feat))
    y = rng.integers(0, classes, size=(m, n_max)).astype(np.int32)
    if same:
        x, y = np.broadcast_to(x[:1], x.shape).copy(), np.broadcast_to(y[:1], y.shape).copy()
    mask = np.arange(n_max)[None, :] < sizes[:, None]
    x, y = np.where(mask[..., None], x, 0.0), np.where(mask, y, 0)
    return ClientData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(sizes, jnp.int32)
    )
