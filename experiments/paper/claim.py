"""The paper's claim as a numerical test with an honest three-way verdict.

Claim (arXiv:2508.01348, Figure 1): SP is more sensitive to a small rank, PS to many local epochs.

* Rank sensitivity at the smallest E (E = 1 in the paper's grid): each operator's drop in accuracy
  from the largest to the smallest rank ratio; the claim says ``drop_SP - drop_PS > 0``.
* Epoch sensitivity at the largest rank ratio: each operator's drop from the smallest to the largest
  E; the claim says ``drop_PS - drop_SP > 0``.

Each difference is computed per seed (SP and PS share the seed's base, init and data order, so they
are paired) and summarized by its mean and a t-interval. A part is *supported* when the interval lies
above 0, *not supported* when it lies below 0, and *inconclusive* otherwise (including a single seed
or missing cells). The overall claim is supported only when both parts are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from experiments.common.stats import mean_ci

__all__ = [
    "part_verdict",
    "claim_verdict",
    "format_verdict",
    "SUPPORTED",
    "NOT_SUPPORTED",
    "INCONCLUSIVE",
]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"


def part_verdict(diff_per_seed, level: float = 0.95) -> dict:
    """Verdict on ``mean(diff) > 0`` from paired per-seed differences."""
    iv = mean_ci(diff_per_seed, level)
    if iv.n < 2:
        verdict, why = INCONCLUSIVE, "one seed: no interval"
    elif iv.lo > 0:
        verdict, why = SUPPORTED, f"{level:.0%} interval above 0"
    elif iv.hi < 0:
        verdict, why = NOT_SUPPORTED, f"{level:.0%} interval below 0 (the opposite holds)"
    else:
        verdict, why = INCONCLUSIVE, f"{level:.0%} interval contains 0"
    return {"verdict": verdict, "reason": why, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n}


def _drop(values: Mapping, op: str, hi_key, lo_key):
    a, b = values.get((op, *hi_key)), values.get((op, *lo_key))
    if a is None or b is None:
        return None
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        return None
    return a - b


def claim_verdict(
    values: Mapping[tuple, np.ndarray], *, sp: str = "sp", ps: str = "ps", level: float = 0.95
) -> dict:
    """Checks the claim on one data set.

    Args:
      values: ``(operator, delta, epochs) -> (n_seeds,)`` statistic per seed (e.g. best test
        accuracy in percent), seeds in the same order in every cell.
      sp, ps: the operator names.
      level: confidence level of the intervals.

    Returns:
      ``{"rank": part, "epoch": part, "overall": verdict}``, each part with ``verdict``, ``reason``,
      the cells it compared, each operator's mean drop and the paired difference's mean and
      interval.
    """
    deltas = sorted({k[1] for k in values})
    epochs = sorted({k[2] for k in values})
    out = {}
    if len(deltas) < 2:
        out["rank"] = {"verdict": INCONCLUSIVE, "reason": "needs two rank ratios"}
    else:
        e = 1 if 1 in epochs else epochs[0]
        hi, lo = (deltas[-1], e), (deltas[0], e)
        d_sp, d_ps = _drop(values, sp, hi, lo), _drop(values, ps, hi, lo)
        if d_sp is None or d_ps is None:
            out["rank"] = {"verdict": INCONCLUSIVE, "reason": "missing cells"}
        else:
            out["rank"] = part_verdict(d_sp - d_ps, level) | {
                "at_epochs": e,
                "from_delta": deltas[-1],
                "to_delta": deltas[0],
                "drop_sp": float(d_sp.mean()),
                "drop_ps": float(d_ps.mean()),
                "claim": "SP drops more than PS as the rank shrinks (drop_SP - drop_PS > 0)",
            }
    if len(epochs) < 2:
        out["epoch"] = {"verdict": INCONCLUSIVE, "reason": "needs two epoch settings"}
    else:
        dl = deltas[-1]
        hi, lo = (dl, epochs[0]), (dl, epochs[-1])
        d_sp, d_ps = _drop(values, sp, hi, lo), _drop(values, ps, hi, lo)
        if d_sp is None or d_ps is None:
            out["epoch"] = {"verdict": INCONCLUSIVE, "reason": "missing cells"}
        else:
            out["epoch"] = part_verdict(d_ps - d_sp, level) | {
                "at_delta": dl,
                "from_epochs": epochs[0],
                "to_epochs": epochs[-1],
                "drop_sp": float(d_sp.mean()),
                "drop_ps": float(d_ps.mean()),
                "claim": "PS drops more than SP as E grows (drop_PS - drop_SP > 0)",
            }
    parts = [out["rank"]["verdict"], out["epoch"]["verdict"]]
    if all(p == SUPPORTED for p in parts):
        overall = SUPPORTED
    elif NOT_SUPPORTED in parts:
        overall = NOT_SUPPORTED
    else:
        overall = INCONCLUSIVE
    out["overall"] = overall
    return out


def format_verdict(verdict: dict, name: str = "", unit: str = "pts") -> str:
    """A few printable lines: each part's evidence and the overall verdict."""
    lines = [f"Claim check{f' on {name}' if name else ''}: {verdict['overall'].upper()}"]
    for key, label in (("rank", "rank sensitivity"), ("epoch", "epoch sensitivity")):
        p = verdict[key]
        if "mean" not in p:
            lines.append(f"  {label}: {p['verdict']} ({p['reason']})")
            continue
        where = (
            f"E={p['at_epochs']}, delta {p['from_delta']} -> {p['to_delta']}"
            if key == "rank"
            else f"delta={p['at_delta']}, E {p['from_epochs']} -> {p['to_epochs']}"
        )
        diff = "SP-PS" if key == "rank" else "PS-SP"
        lines.append(
            f"  {label} ({where}): drop SP {p['drop_sp']:+.2f} {unit}, PS {p['drop_ps']:+.2f} "
            f"{unit}; {diff} {p['mean']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}] (n={p['n']}) "
            f"-> {p['verdict']} ({p['reason']})"
        )
    return "\n".join(lines)
