"""Every aggregation-broadcast operator on one non-IID task (the operator zoo)."""

import experiments.common  # noqa: F401  (caps OpenBLAS threads before numpy/jax load it)
