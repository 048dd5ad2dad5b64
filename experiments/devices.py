"""Several JAX CPU devices for one experiment: one device per core keeps every core busy.

XLA:CPU runs one device's program mostly as one stream; with ``jax_num_cpu_devices`` (set before
JAX's first computation) and ``make_simulation(mesh=...)`` each device trains its share of the
clients and the cores run the shares side by side (``experiments/bench/RESULTS.md``).

Not part of ``experiments.common``: importing that package sets ``OPENBLAS_NUM_THREADS``, and the
benchmarks, which use these helpers, must run with the environment their user set (they record it).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["use_host_devices", "mesh_devices", "host_mesh"]


def use_host_devices(n: int) -> int:
    """Asks JAX for ``n`` CPU devices (``jax_num_cpu_devices``); returns the device count it sees.

    Must run before JAX's first computation in the process; if JAX has already started with fewer
    devices, raises with a message saying so. No-op for ``n <= 1``.
    """
    if n > 1:
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError as err:
            if jax.device_count() < n:
                raise RuntimeError(
                    f"--host-devices {n}: JAX already runs with {jax.device_count()} device(s);"
                    " the option must take effect before any JAX computation"
                ) from err
    return jax.device_count()


def mesh_devices(m: int) -> int:
    """The most devices (of ``jax.devices()``) a mesh over ``m`` clients can use: a divisor of m."""
    return max(d for d in range(1, jax.device_count() + 1) if m % d == 0)


def host_mesh(devices: int, axis: str = "clients") -> Mesh | None:
    """A one-axis mesh over the first ``devices`` JAX devices, or None for one device.

    ``host_mesh(mesh_devices(m))`` splits ``m`` clients over as many devices as divide it.
    """
    return Mesh(np.array(jax.devices()[:devices]), (axis,)) if devices > 1 else None
