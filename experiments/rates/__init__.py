"""Rate studies on theory's small smooth federated LoRA problem (eta sweeps, rate in T)."""

import experiments.common  # noqa: F401  (caps OpenBLAS threads before numpy/jax load it)
