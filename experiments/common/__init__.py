"""Shared experiment utilities: results folders, atomic writes, resumable grids, stats, plots.

Importing this package caps OpenBLAS (used by the CPU LAPACK kernels behind ``jnp.linalg.svd`` and
``qr``) at one thread: on a busy machine its thread pool turns a sub-millisecond QR into half a
second, which made an SP round ~1000x slower than a PS round.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def limit_blas_threads(n: int = 1) -> None:
    """Caps already-loaded BLAS/LAPACK thread pools at ``n`` threads (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return
    threadpool_limits(n, user_api="blas")
