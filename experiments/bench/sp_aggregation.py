"""Benchmark 4: SP aggregation from the stacked factors against the dense ``d x k`` SVD.

SP (Sum-Product) broadcasts the best rank-r factorization of ``Zbar = sum_i p_i B_i A_i``. Its rank
is at most ``m r``, so ``abo_jax.aggregation.stacked_svd`` gets the thin SVD from QRs of the stacked
factors and an ``(m r, m r)`` core, never forming the ``d x k`` matrix. The baseline forms ``Zbar``
and takes its dense SVD (``jnp.linalg.svd``, what published SP/FlexLoRA code does). Both must give
the same singular values and rank-r product to float32 precision. Run it with
``OPENBLAS_NUM_THREADS=1`` on a shared machine (RESULTS.md, 4).
Target (issue 7): stacked at least 100x faster at ``d = k = 4096``, ``m = 10``, ``r = 8``.

Reference: Chen et al., arXiv:2508.01348 (SP/PS); Bai et al. (FlexLoRA), arXiv:2402.11505.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import abo_jax
from abo_jax.aggregation import stacked_svd
from experiments.bench import common

NAME = "sp_aggregation"
TITLE = "SP aggregation: stacked factors vs dense SVD"


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (1024, 2048, 4096)  # d = k
    clients: tuple[int, ...] = (10, 100)  # m
    rank: int = 8  # r of every client and of the broadcast
    reps: int = 3  # repetitions of the dense SVD (round-robin with the stacked paths)
    fast_reps: int = 20  # repetitions of the fast paths alone (warm)
    rtol: float = 1e-4  # "same result": singular values and rank-r product, relative
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    return Config(sizes=(64,), clients=(3,), rank=4, reps=1, fast_reps=2) if quick else Config()


def make_inputs(key, m: int, d: int, r: int):
    """Client factors ``b (m, d, r)``, ``a (m, r, d)`` and Dirichlet weights ``p (m,)``, float32."""
    kb, ka, kw = jax.random.split(key, 3)
    b = jax.random.normal(kb, (m, d, r), jnp.float32) / float(np.sqrt(d))
    a = jax.random.normal(ka, (m, r, d), jnp.float32) / float(np.sqrt(d))
    return b, a, jax.random.dirichlet(kw, jnp.ones((m,), jnp.float32)).astype(jnp.float32)


def dense_svd(b, a, w):
    """The baseline: ``Zbar`` ``(d, k)`` formed explicitly, then its thin SVD."""
    return jnp.linalg.svd(jnp.einsum("c,cdr,crk->dk", w, b, a), full_matrices=False)


def sp_abo(b, a, w):
    """abo_jax's whole SP operator (stacked path, split, broadcast)."""
    broadcast, _, _ = abo_jax.sum_product().aggregate({"w": abo_jax.LoRAFactors(b, a)}, w)
    return broadcast.factors["w"]


def compare(stacked, dense, m: int, r: int) -> dict:
    """Singular values (the first ``m r``) and the rank-r products of the two, relative."""
    (us, ss, vs), (ud, sd, vd) = (
        tuple(np.asarray(x, np.float64) for x in t) for t in (stacked, dense)
    )
    ps, pd = (us[:, :r] * ss[:r]) @ vs[:r], (ud[:, :r] * sd[:r]) @ vd[:r]
    return {
        "sv_rel_err": float(np.max(np.abs(ss[: m * r] - sd[: m * r])) / sd[0]),
        "product_rel_err": float(np.linalg.norm(ps - pd) / np.linalg.norm(pd)),
    }


def _keeping(store: dict, name: str, fn, args):
    """A thunk calling ``fn(*args)`` that keeps its last result in ``store[name]``."""

    def thunk():
        store[name] = fn(*args)
        return store[name]

    return thunk


def run(config: Config, reps: int | None = None) -> dict:
    rows, r = [], config.rank
    for d in config.sizes:
        for m in config.clients:
            if m * r >= d:
                raise ValueError(f"stacked SP needs m r < d; got m={m}, r={r}, d=k={d}")
            args = make_inputs(
                jax.random.fold_in(jax.random.key(config.seed), d * 1000 + m), m, d, r
            )
            fns = {"stacked": stacked_svd, "sp_abo": sp_abo, "dense": dense_svd}
            thunks, compile_s, last = {}, {}, {}
            for name, fn in fns.items():
                compiled, compile_s[name] = common.compile_timed(fn, *args)
                thunks[name] = _keeping(last, name, compiled, args)
            print(f"  sp_aggregation: d=k={d}, m={m} ...", file=sys.stderr, flush=True)
            # The dense SVD takes seconds: compiled ahead of time, no warm-up call for it.
            t_all = common.time_interleaved(thunks, reps=reps or config.reps, warmup=0)
            fast = {k: thunks[k] for k in ("stacked", "sp_abo")}
            t_fast = common.time_interleaved(fast, reps=config.fast_reps)
            agreement = compare(last["stacked"], last["dense"], m, r)
            t_st, t_abo, t_de = (t_fast["stacked"], t_fast["sp_abo"], t_all["dense"])
            rows.append(
                {
                    "d": d,
                    "m": m,
                    "r": r,
                    "stacked_s": t_st.median_s,
                    "sp_abo_s": t_abo.median_s,
                    "dense_s": t_de.median_s,
                    "speedup": t_de.median_s / t_st.median_s,
                    "speedup_abo": t_de.median_s / t_abo.median_s,
                    "compile_s": compile_s,
                    "times_s": {
                        "stacked": t_st.times_s,
                        "sp_abo": t_abo.times_s,
                        "dense": t_de.times_s,
                    },
                    **agreement,
                    "same_result": max(agreement.values()) <= config.rtol,
                }
            )
    target = [x["speedup"] >= 100 for x in rows if (x["d"], x["m"], x["r"]) == (4096, 10, 8)]
    targets = {
        "speedup_4096_m10_ge_100x": target[0] if target else None,
        "all_same_result": all(x["same_result"] for x in rows),
    }
    return {"rows": rows, "targets": targets}


COLUMNS = [
    ("d", "d=k", None),
    ("m", "m", None),
    ("r", "r", None),
    ("stacked_s", "stacked [s]", ".3g"),
    ("sp_abo_s", "SP ABO [s]", ".3g"),
    ("dense_s", "dense SVD [s]", ".3g"),
    ("speedup", "dense/stacked", ".0f"),
    ("speedup_abo", "dense/ABO", ".0f"),
    ("sv_rel_err", "sv err", ".1e"),
    ("product_rel_err", "rank-r err", ".1e"),
    ("same_result", "same", None),
]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
