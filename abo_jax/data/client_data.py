"""Client data padded to one shape, with a validity mask (no Python loops over clients)."""

from __future__ import annotations

from typing import NamedTuple

import jax

__all__ = ["ClientData"]


class ClientData(NamedTuple):
    """Every client's examples padded to ``n_max`` rows.

    Attributes:
      x: ``(m, n_max, ...)`` inputs (padding rows are zeros).
      y: ``(m, n_max)`` integer labels (padding rows are 0).
      mask: ``(m, n_max)`` bool, True for real examples.
      sizes: ``(m,)`` int, the number of real examples ``n_i`` of each client.
    """

    x: jax.Array  # (m, n_max, ...) float
    y: jax.Array  # (m, n_max) int32
    mask: jax.Array  # (m, n_max) bool
    sizes: jax.Array  # (m,) int32
