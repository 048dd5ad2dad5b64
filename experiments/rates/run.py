"""Rates on theory's small smooth problem: mismatch over eta^2, and the gradient norm against T.

1. **eta sweep** (per operator): ``sup_t R_w / eta^2`` and ``sup_t (R_B + R_A) / eta^2`` against
   ``eta`` with ``theory.trajectory_conditions``' verdict (bounded or not as eta -> 0).
2. **rate in T** (SP and PS): with ``eta = eta0 / sqrt(T)``, the average squared gradient norm
   ``(1/T) sum_t ||grad f(x^t)||^2`` against ``T`` on log-log axes, its fitted slope next to the
   theory's ``-1/2``, and ``theory.rate_bounds``' weak and strong bounds evaluated on each run.

Runs go through ``theory.problems.run_federated`` (one compile per operator and ``T``; step sizes
in turn). Reference: Chen et al., arXiv:2508.01348 (our formalization, see ``theory``).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import abo_jax
from experiments.common import limit_blas_threads
from experiments.common.config import bad_option, parse_config
from experiments.common.grid import run_grid
from experiments.common.io import atomic_write_csv, atomic_write_json, config_hash, results_dir
from experiments.common.plotting import plt, save
from experiments.common.progress import log

__all__ = ["RatesConfig", "get_config", "get_quick_config", "fit_slope", "run_rates", "main"]


@dataclasses.dataclass(frozen=True)
class RatesConfig:
    """The eta sweep and the rate in T; every field can be overridden on the command line.

    Attributes:
      problem: theory's small smooth problem: least_squares or logistic.
      clients: clients of the problem.
      samples: samples per client.
      d: output dimension of the LoRA layer.
      k: input dimension of the LoRA layer.
      rank: LoRA rank (1..min(d, k)).
      heterogeneity: scale h of the clients' target maps W_i = W_* + h U_i (>= 0; 0: identical).
      sweep_operators: operators of the eta sweep (equal-rank abo_jax names).
      etas: step sizes of the sweep (> 0).
      sweep_rounds: rounds per sweep run.
      local_steps: local steps per round.
      rate_operators: operators of the rate-in-T part.
      horizons: horizons T of the rate part (positive integers).
      eta0: step size eta = eta0 / sqrt(T) of the rate part (> 0).
      seed: seed of the problem and of the runs.
      out: results root folder.
      name: results folder name under out (default: derived from the config).
      progress: show progress bars.
    """

    problem: str = "least_squares"  # or "logistic"
    clients: int = 4
    samples: int = 24
    d: int = 3
    k: int = 5
    rank: int = 1
    heterogeneity: float = 1.0
    sweep_operators: tuple[str, ...] = ("sum_product", "product_sum", "fedex", "ffa", "rolora")
    etas: tuple[float, ...] = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
    sweep_rounds: int = 40
    local_steps: int = 5
    rate_operators: tuple[str, ...] = ("sum_product", "product_sum")
    horizons: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    eta0: float = 0.2  # eta = eta0 / sqrt(T)
    seed: int = 0
    out: str = "results"
    name: str = ""
    progress: bool = True

    def validate(self) -> None:
        """Rejects values that cannot run, before any work (``ValueError`` naming the option)."""
        from theory.certify import KNOWN_OPERATORS

        if self.problem not in PROBLEMS:
            bad_option("problem", f"expected one of {', '.join(PROBLEMS)}, got {self.problem!r}")
        for name in ("clients", "samples", "d", "k", "rank", "sweep_rounds", "local_steps"):
            if getattr(self, name) < 1:
                bad_option(name, f"must be at least 1, got {getattr(self, name)}")
        if self.rank > min(self.d, self.k):
            bad_option(
                "rank", f"must be at most min(d, k) = {min(self.d, self.k)}, got {self.rank}"
            )
        if not self.heterogeneity >= 0:
            bad_option("heterogeneity", f"must be >= 0, got {self.heterogeneity}")
        usable = [op for op in KNOWN_OPERATORS if op not in ("hetlora", "rbla", "flexlora")]
        for option in ("sweep_operators", "rate_operators"):
            ops = getattr(self, option)
            unknown = [op for op in ops if op not in usable]
            if not ops or unknown:
                bad_option(
                    option,
                    f"unknown {unknown or 'empty list'}; expected names in {', '.join(usable)}",
                )
        if not self.etas or any(not 0 < e < float("inf") for e in self.etas):
            bad_option("etas", f"step sizes must be finite and > 0, got {self.etas}")
        if not self.horizons or any(t < 1 for t in self.horizons):
            bad_option("horizons", f"horizons must be positive integers, got {self.horizons}")
        if not 0 < self.eta0 < float("inf"):
            bad_option("eta0", f"must be finite and > 0, got {self.eta0}")


PROBLEMS = ("least_squares", "logistic")


def get_config() -> RatesConfig:
    return RatesConfig()


def get_quick_config() -> RatesConfig:
    return RatesConfig(
        sweep_operators=("sum_product", "product_sum"),
        etas=(0.1, 0.03, 0.01),
        sweep_rounds=4,
        horizons=(8, 16),
        local_steps=2,
    )


def fit_slope(x, y) -> float:
    """Least-squares slope of ``log y`` on ``log x``."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if lx.size < 2:
        raise ValueError("fit_slope: needs at least two points")
    return float(np.polyfit(lx, ly, 1)[0])


def _problem(cfg: RatesConfig):
    from theory.problems import least_squares_problem, logistic_problem

    make = {"least_squares": least_squares_problem, "logistic": logistic_problem}[cfg.problem]
    return make(
        jax.random.key(cfg.seed),
        clients=cfg.clients,
        samples=cfg.samples,
        d=cfg.d,
        k=cfg.k,
        rank=cfg.rank,
        heterogeneity=cfg.heterogeneity,
    )


def _sweep_cell(cell, cfg):
    from theory.conditions import trajectory_conditions
    from theory.problems import run_federated

    limit_blas_threads(1)
    problem, abo = _problem(cfg), abo_jax.make_operator(cell["op"])
    records = {}
    for eta in cell["etas"]:
        run = run_federated(
            problem,
            abo,
            eta=eta,
            rounds=cell["rounds"],
            local_steps=cell["E"],
            key=jax.random.key(cfg.seed + 1),
        )
        records[eta] = {k: np.asarray(v) for k, v in run.records.items()}
    finite = {e: r for e, r in records.items() if all(np.all(np.isfinite(v)) for v in r.values())}
    diverged = sorted(set(records) - set(finite))
    if len(finite) >= 2:
        report = trajectory_conditions(finite)
        verdicts = (report.weak_verdict, report.strong_verdict)
    else:
        verdicts = ("insufficient evidence", "insufficient evidence")
    nan = float("nan")

    def sup(eta, *keys):
        if eta not in finite:
            return nan  # diverged at this step size
        return float(np.max(sum(finite[eta][k] for k in keys)) / eta**2)

    return {
        "etas": cell["etas"],
        "weak_ratio": [sup(e, "weak_mismatch") for e in cell["etas"]],
        "strong_ratio": [sup(e, "strong_mismatch_b", "strong_mismatch_a") for e in cell["etas"]],
        "weak_verdict": verdicts[0],
        "strong_verdict": verdicts[1],
        "diverged_etas": diverged,
    }


def _rate_cell(cell, cfg):
    from theory.bounds import rate_bounds
    from theory.problems import run_federated

    limit_blas_threads(1)
    problem, abo = _problem(cfg), abo_jax.make_operator(cell["op"])
    out = {"T": [], "eta": [], "measured": [], "bound_weak": [], "bound_strong": []}
    for T in cell["horizons"]:
        eta = cell["eta0"] / np.sqrt(T)
        run = run_federated(
            problem, abo, eta=eta, rounds=T, local_steps=cell["E"], key=jax.random.key(cfg.seed + 1)
        )
        try:
            rep = rate_bounds(problem, run, eta=eta, local_steps=cell["E"])
            bounds = (rep.bound_weak, rep.bound_strong)
        except ValueError:  # a diverged run (non-finite records) has no bound
            bounds = (float("nan"), float("nan"))
        out["T"].append(T)
        out["eta"].append(eta)
        out["measured"].append(float(np.mean(np.asarray(run.records["grad_sq_norm"]))))
        out["bound_weak"].append(bounds[0])
        out["bound_strong"].append(bounds[1])
    ok = np.isfinite(out["measured"]) & (np.asarray(out["measured"]) > 0)
    t_ok = np.asarray(out["T"])[ok]
    out["slope"] = fit_slope(t_ok, np.asarray(out["measured"])[ok]) if ok.sum() >= 2 else None
    return out


def _fmt(slope) -> str:
    return "n/a" if slope is None else f"{slope:+.3f}"


def run_name(cfg: RatesConfig) -> str:
    if cfg.name:
        return cfg.name
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress"):
        fields.pop(k)
    return f"rates-{cfg.problem}-{config_hash(fields)}"


def run_rates(cfg: RatesConfig) -> dict:
    folder = results_dir(cfg.out, run_name(cfg))
    atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    problem_id = {
        k: getattr(cfg, k)
        for k in ("problem", "clients", "samples", "d", "k", "rank", "heterogeneity", "seed")
    }
    cells = [
        {
            "part": "sweep",
            "op": op,
            "etas": list(cfg.etas),
            "rounds": cfg.sweep_rounds,
            "E": cfg.local_steps,
            **problem_id,
        }
        for op in cfg.sweep_operators
    ]
    cells += [
        {
            "part": "rate",
            "op": op,
            "horizons": list(cfg.horizons),
            "eta0": cfg.eta0,
            "E": cfg.local_steps,
            **problem_id,
        }
        for op in cfg.rate_operators
    ]

    def run_cell(cell):
        return _sweep_cell(cell, cfg) if cell["part"] == "sweep" else _rate_cell(cell, cfg)

    records, counts = run_grid(
        cells, run_cell, folder / "cells", desc="rates", show_progress=cfg.progress
    )
    sweep = [r for r in records if r["cell"]["part"] == "sweep"]
    rate = [r for r in records if r["cell"]["part"] == "rate"]
    rows = [
        {
            "operator": r["cell"]["op"],
            "eta": e,
            "sup_weak_over_eta2": w,
            "sup_strong_over_eta2": s,
            "weak_verdict": r["result"]["weak_verdict"],
            "strong_verdict": r["result"]["strong_verdict"],
        }
        for r in sweep
        for e, w, s in zip(
            r["result"]["etas"], r["result"]["weak_ratio"], r["result"]["strong_ratio"], strict=True
        )
    ]
    atomic_write_csv(folder / "eta_sweep.csv", rows)
    rate_rows = [
        {
            "operator": r["cell"]["op"],
            "T": t,
            "eta": e,
            "avg_grad_sq": m,
            "bound_weak": bw,
            "bound_strong": bs,
            "fitted_slope": r["result"]["slope"],
        }
        for r in rate
        for t, e, m, bw, bs in zip(
            r["result"]["T"],
            r["result"]["eta"],
            r["result"]["measured"],
            r["result"]["bound_weak"],
            r["result"]["bound_strong"],
            strict=True,
        )
    ]
    atomic_write_csv(folder / "rate_vs_T.csv", rate_rows)
    plots = []
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for r in sweep:
            res, op = r["result"], r["cell"]["op"]
            axes[0].loglog(
                res["etas"], res["weak_ratio"], "o-", label=f"{op} ({res['weak_verdict']})"
            )
            axes[1].loglog(
                res["etas"], res["strong_ratio"], "o-", label=f"{op} ({res['strong_verdict']})"
            )
        axes[0].set(xlabel="eta", ylabel="sup_t R_w / eta^2", title="weak condition")
        axes[1].set(xlabel="eta", ylabel="sup_t (R_B + R_A) / eta^2", title="strong condition")
        for ax in axes:
            ax.invert_xaxis()
            ax.legend(fontsize=8)
        plots.append(save(fig, folder / "eta_sweep.png"))
    if rate:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in rate:
            res, op = r["result"], r["cell"]["op"]
            (line,) = ax.loglog(
                res["T"], res["measured"], "o-", label=f"{op}: measured, slope {res['slope']:+.2f}"
            )
            ax.loglog(
                res["T"],
                res["bound_weak"],
                "--",
                color=line.get_color(),
                label=f"{op}: weak bound (theory.rate_bounds)",
            )
            ax.loglog(
                res["T"],
                res["bound_strong"],
                ":",
                color=line.get_color(),
                label=f"{op}: strong bound",
            )
        t = np.asarray(rate[0]["result"]["T"], float)
        ref = rate[0]["result"]["measured"][0] * (t / t[0]) ** -0.5
        ax.loglog(t, ref, "k-", alpha=0.4, label="slope -1/2 (theory)")
        ax.set(
            xlabel="rounds T (eta = eta0 / sqrt(T))",
            ylabel="(1/T) sum_t ||grad f(x^t)||^2",
            title="rate in T",
        )
        ax.legend(fontsize=7)
        plots.append(save(fig, folder / "rate_vs_T.png"))
    return {
        "folder": folder,
        "sweep": rows,
        "rate": rate_rows,
        "counts": counts,
        "plots": plots,
        "slopes": {r["cell"]["op"]: r["result"]["slope"] for r in rate},
    }


def main(argv=None) -> dict:
    cfg = parse_config(get_config, argv, __doc__.splitlines()[0], get_quick_config)
    result = run_rates(cfg)
    seen = set()
    for r in result["sweep"]:
        if r["operator"] not in seen:
            seen.add(r["operator"])
            log(f"{r['operator']:<12} weak: {r['weak_verdict']:<22} strong: {r['strong_verdict']}")
    for op, slope in result["slopes"].items():
        log(
            f"{op:<12} fitted slope of the average squared gradient norm vs T: {slope:+.3f} "
            "(theory: -1/2 with eta ~ 1/sqrt(T))"
        )
    log(f"results: {result['folder']}")
    return result
