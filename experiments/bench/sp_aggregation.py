"""Benchmark 4: SP aggregation from the stacked factors vs the dense ``d x k`` SVD.

SP (Sum-Product) broadcasts the best rank-r factorization of ``Zbar = sum_i p_i B_i A_i``. Its rank is
at most ``m r``, so :func:`abo_jax.stacked_svd` gets the thin SVD from QRs of the stacked factors and
an ``(m r, m r)`` core, never forming the ``d x k`` matrix. The baseline forms ``Zbar`` explicitly and
takes its dense SVD (what published SP/FlexLoRA code does). Both must give the same singular values
and the same rank-r product to float32 precision.

Run: ``python -m experiments.bench.sp_aggregation [--quick] [--out DIR]``.
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
from experiments.bench import common

NAME = "sp_aggregation"
TITLE = "SP aggregation: stacked factors vs dense SVD"


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (1024, 2048, 4096)  # d = k
    clients: tuple[int, ...] = (10, 100)  # m
    rank: int = 8  # r of every client and of the broadcast
    dtype: str = "float32"
    reps: int = 3  # timed repetitions of the dense SVD (interleaved with the stacked path)
    fast_reps: int = 20  # repetitions of the fast paths alone (warm), whose median is reported
    rtol: float = 1e-4  # "same result": singular values and rank-r product, relative
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        return Config(sizes=(64,), clients=(3,), rank=4, reps=1, fast_reps=2)
    return Config()


def make_inputs(key, m: int, d: int, k: int, r: int, dtype):
    """Random client factors and Dirichlet weights: ``b (m, d, r)``, ``a (m, r, k)``, ``p (m,)``."""
    kb, ka, kw = jax.random.split(key, 3)
    b = jax.random.normal(kb, (m, d, r), dtype) / float(np.sqrt(d))
    a = jax.random.normal(ka, (m, r, k), dtype) / float(np.sqrt(k))
    w = jax.random.dirichlet(kw, jnp.ones((m,), dtype))
    return b, a, w.astype(dtype)


def dense_svd(b, a, w):
    """The baseline: form ``Zbar`` ``(d, k)`` explicitly, then its thin SVD."""
    zbar = jnp.einsum("c,cdr,crk->dk", w, b, a)
    return jnp.linalg.svd(zbar, full_matrices=False)


def sp_abo(b, a, w):
    """abo_jax's whole SP operator (stacked path + split + broadcast to every client)."""
    broadcast, _, diag = abo_jax.sum_product().aggregate({"w": abo_jax.LoRAFactors(b, a)}, w)
    return broadcast.factors["w"], diag["sp_tail"]


def rank_r_product(u, s, vt, r: int) -> np.ndarray:
    u, s, vt = (np.asarray(x, np.float64) for x in (u, s, vt))
    return (u[:, :r] * s[:r]) @ vt[:r]


def compare(stacked, dense, m: int, r: int) -> dict:
    """Agreement of the stacked and dense results: singular values and the rank-r product."""
    s_st = np.asarray(stacked[1], np.float64)
    s_de = np.asarray(dense[1], np.float64)
    q = m * r
    p_st = rank_r_product(*stacked, r)
    p_de = rank_r_product(*dense, r)
    return {
        "sv_rel_err": float(np.max(np.abs(s_st[:q] - s_de[:q])) / s_de[0]),
        "dense_tail_rel": float(s_de[q] / s_de[0]) if s_de.shape[0] > q else 0.0,
        "product_rel_err": float(np.linalg.norm(p_st - p_de) / np.linalg.norm(p_de)),
        "gap_r": float(s_de[r - 1] / s_de[r]),  # s_r / s_{r+1}: the rank-r product's conditioning
    }


def _keeping(store: dict, name: str, fn, args):
    """A thunk calling ``fn(*args)`` that keeps its last result in ``store[name]``."""

    def thunk():
        store[name] = fn(*args)
        return store[name]

    return thunk


def run(config: Config, reps: int | None = None) -> dict:
    dtype = jnp.dtype(config.dtype)
    reps = config.reps if reps is None else reps
    rows = []
    key = jax.random.key(config.seed)
    for d in config.sizes:
        for m in config.clients:
            r = config.rank
            if m * r >= d:
                raise ValueError(f"stacked SP needs m r < min(d, k); got m={m}, r={r}, d=k={d}")
            b, a, w = make_inputs(jax.random.fold_in(key, d * 1000 + m), m, d, d, r, dtype)
            st_fn, st_c = common.compile_timed(abo_jax.stacked_svd, b, a, w)
            abo_fn, abo_c = common.compile_timed(sp_abo, b, a, w)
            de_fn, de_c = common.compile_timed(dense_svd, b, a, w)
            last: dict = {}
            thunks = {
                "stacked": _keeping(last, "stacked", st_fn, (b, a, w)),
                "sp_abo": _keeping(last, "sp_abo", abo_fn, (b, a, w)),
                "dense": _keeping(last, "dense", de_fn, (b, a, w)),
            }
            print(f"  sp_aggregation: d=k={d}, m={m} ...", file=sys.stderr, flush=True)
            # The dense SVD takes seconds: compiled ahead of time, so no warm-up call for it.
            t_all = common.time_interleaved(thunks, reps=reps, warmup=0)
            t_fast = common.time_interleaved(
                {k: thunks[k] for k in ("stacked", "sp_abo")}, reps=config.fast_reps, warmup=1
            )
            agreement = compare(last["stacked"], last["dense"], m, r)
            t_st = t_fast["stacked"].median_s
            t_abo = t_fast["sp_abo"].median_s
            t_de = t_all["dense"].median_s
            rows.append(
                {
                    "d": d,
                    "k": d,
                    "m": m,
                    "r": r,
                    "stacked_s": t_st,
                    "sp_abo_s": t_abo,
                    "dense_s": t_de,
                    "speedup": t_de / t_st,
                    "speedup_abo": t_de / t_abo,
                    "compile_s": {"stacked": st_c, "sp_abo": abo_c, "dense": de_c},
                    "times_s": {
                        "stacked": t_fast["stacked"].times_s,
                        "sp_abo": t_fast["sp_abo"].times_s,
                        "dense": t_all["dense"].times_s,
                    },
                    **agreement,
                    "same_result": agreement["sv_rel_err"] <= config.rtol
                    and agreement["product_rel_err"] <= config.rtol,
                }
            )
    target_row = next((x for x in rows if x["d"] == 4096 and x["m"] == 10 and x["r"] == 8), None)
    targets = {
        "speedup_4096_m10_ge_100x": None if target_row is None else target_row["speedup"] >= 100,
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


def notes(config: Config, result: dict, env: dict) -> list[str]:
    return [
        "stacked = jit(abo_jax.stacked_svd); SP ABO = jit(sum_product().aggregate) incl. split and"
        " broadcast; dense = jit(einsum Zbar (d, k) + jnp.linalg.svd). Medians, warm-up excluded;"
        " compile times in the JSON.",
        "sv err: max |s_stacked - s_dense| / s_max over the m r singular values; rank-r err:"
        " ||P Q (stacked) - P Q (dense)||_F / ||P Q (dense)||_F.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main(sys.argv[1:])
