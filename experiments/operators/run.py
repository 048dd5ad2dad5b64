"""All operators on one non-IID task: accuracy, mismatch terms, bytes, server time.

Runs abo_jax's simulator (``make_simulation`` and ``run``, one compiled round for all seeds, client
sampling) with
``theory.round_metrics`` in the jitted round, for a Dirichlet and a one-class-per-client split.
Heterogeneous-rank operators (HetLoRA, RBLA, FlexLoRA) get per-client ranks cycling through
``hetero_ranks`` (padded to the largest); FedAvg of full weights is the dense reference. The server
time is the jitted ``aggregate`` alone, timed on the last round's trained client factors.

Run ``python -m experiments.operators --help``; results go to ``results/operators-*/``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import abo_jax
from abo_jax.data import dirichlet, load_dataset, one_class_per_client, pad_clients
from abo_jax.models.mlp import paper_mlp
from abo_jax.simulation import make_simulation, run, uniform_sampling
from experiments.common import limit_blas_threads
from experiments.common.config import bad_option, parse_config
from experiments.common.grid import run_grid
from experiments.common.io import atomic_write_csv, atomic_write_json, config_hash, results_dir
from experiments.common.plotting import curves_with_band, plt, save
from experiments.common.progress import log
from experiments.common.stats import mean_ci
from theory.functionals import round_metrics

__all__ = ["OperatorsConfig", "get_config", "get_quick_config", "run_operators", "main"]

HETERO = abo_jax.aggregation.RANKED_OPERATORS
#: every operator theory.certify knows by name, plus full-weight FedAvg as the dense reference
ALL_OPERATORS = tuple(abo_jax.OPERATORS)
MISMATCH = (
    "weak_mismatch",
    "strong_mismatch_b",
    "strong_mismatch_a",
    "sp_tail",
    "ps_error",
    "product_error",
)


@dataclasses.dataclass(frozen=True)
class OperatorsConfig:
    """Every operator on one non-IID task; every field can be overridden on the command line.

    Attributes:
      dataset: data set: digits (bundled), fashion_mnist, mnist, kmnist, qmnist.
      data_dir: folder with the IDX files (MNIST, KMNIST, QMNIST; Fashion-MNIST has a default).
      partitions: client splits to run: dirichlet (label skew) and/or one_class.
      dirichlet_alpha: Dirichlet concentration of the dirichlet split (finite, > 0; small: skewed).
      operators: operators to run (abo_jax names, plus fedavg_full: FedAvg of full weights).
      num_clients: clients m.
      clients_per_round: clients sampled each round (1..num_clients).
      rounds: federated rounds.
      epochs: local epochs per round.
      rank: LoRA rank of the equal-rank operators.
      hetero_ranks: per-client ranks (cycled over clients) of hetlora, rbla and flexlora.
      hidden: hidden layer widths of the MLP.
      batch_size: local minibatch size.
      lr: local SGD learning rate.
      seeds: seeds per cell (run in turn).
      timing_repeats: repetitions of the timed server aggregation.
      out: results root folder.
      name: results folder name under out (default: derived from the config).
      progress: show progress bars.
    """

    dataset: str = "digits"
    data_dir: str = ""
    partitions: tuple[str, ...] = ("dirichlet", "one_class")
    dirichlet_alpha: float = 0.3
    operators: tuple[str, ...] = ALL_OPERATORS
    num_clients: int = 10
    clients_per_round: int = 5
    rounds: int = 60
    epochs: int = 1
    rank: int = 8
    hetero_ranks: tuple[int, ...] = (2, 4, 8)
    hidden: tuple[int, ...] = (200, 200)
    batch_size: int = 8  # digits-sized (~144 examples per client; 64 gives 3 steps per epoch)
    lr: float = 0.01
    seeds: int = 3
    timing_repeats: int = 20
    out: str = "results"
    name: str = ""
    progress: bool = True

    def validate(self) -> None:
        """Rejects values that cannot run, before any work (``ValueError`` naming the option)."""
        from abo_jax.data import DATASET_NAMES

        if self.dataset not in DATASET_NAMES:
            bad_option(
                "dataset", f"expected one of {', '.join(DATASET_NAMES)}, got {self.dataset!r}"
            )
        if not self.partitions or any(p not in ("dirichlet", "one_class") for p in self.partitions):
            bad_option("partitions", f"expected dirichlet and/or one_class, got {self.partitions}")
        if not (0 < self.dirichlet_alpha < float("inf")):
            bad_option("dirichlet_alpha", f"must be finite and > 0, got {self.dirichlet_alpha}")
        unknown = [op for op in self.operators if op not in ALL_OPERATORS]
        if not self.operators or unknown:
            bad_option(
                "operators",
                f"unknown {unknown or 'empty list'}; expected {', '.join(ALL_OPERATORS)}",
            )
        for name in ("num_clients", "rounds", "epochs", "rank", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                bad_option(name, f"must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.clients_per_round <= self.num_clients:
            bad_option(
                "clients_per_round",
                f"must lie in 1..num_clients ({self.num_clients}), got {self.clients_per_round}",
            )
        if not self.hetero_ranks or any(r < 1 for r in self.hetero_ranks):
            bad_option("hetero_ranks", f"ranks must be positive, got {self.hetero_ranks}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            bad_option("hidden", f"layer widths must be positive, got {self.hidden}")
        if not self.lr > 0:
            bad_option("lr", f"must be > 0, got {self.lr}")
        if self.timing_repeats < 1:
            bad_option("timing_repeats", f"must be at least 1, got {self.timing_repeats}")


def get_config() -> OperatorsConfig:
    return OperatorsConfig()


def get_quick_config() -> OperatorsConfig:
    return OperatorsConfig(
        partitions=("dirichlet",),
        operators=("sum_product", "product_sum", "hetlora", "fedavg_full"),
        rounds=2,
        hidden=(32, 32),
        rank=4,
        hetero_ranks=(2, 4),
        seeds=2,
        timing_repeats=3,
    )


def _data(cfg: OperatorsConfig, partition: str):
    ds = load_dataset(cfg.dataset, directory=cfg.data_dir or None, flatten=True)
    if partition == "dirichlet":
        part = dirichlet(ds.y_train, num_clients=cfg.num_clients, alpha=cfg.dirichlet_alpha, key=0)
    elif partition == "one_class":
        part = one_class_per_client(ds.y_train, num_clients=cfg.num_clients)
    else:
        raise ValueError(f"partitions: 'dirichlet' or 'one_class', got {partition!r}")
    data = pad_clients(ds.x_train, ds.y_train, part)
    return data, (np.asarray(ds.x_test), np.asarray(ds.y_test)), ds.x_train.shape[-1]


def _client_ranks(cfg: OperatorsConfig) -> np.ndarray:
    return np.array([cfg.hetero_ranks[i % len(cfg.hetero_ranks)] for i in range(cfg.num_clients)])


def _make_abo(name: str, cfg: OperatorsConfig):
    return abo_jax.make_operator(name, client_ranks=_client_ranks(cfg) if name in HETERO else None)


def _run_cell(cell: dict, cfg: OperatorsConfig) -> dict:
    limit_blas_threads(1)
    name, partition = cell["op"], cell["partition"]
    data, test, in_features = _data(cfg, partition)
    full = name == "fedavg_full"
    rank = max(cfg.hetero_ranks) if name in HETERO else cfg.rank
    model = paper_mlp(in_features, cfg.hidden, 10, ranks=rank, mode="full" if full else "lora")
    abo = _make_abo(name, cfg)
    sim = make_simulation(
        model,
        abo,
        local_epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        sampling=uniform_sampling(cfg.clients_per_round),
        metrics_fn=None if full else round_metrics,
    )  # ranks, scales and personalization come from the operator's traits
    t0 = time.perf_counter()
    # Seeds in turn through one compiled round. (They once hung on a run axis; the cause was
    # jaxlib's CPU SVD kernel, now avoided by abo_jax.linalg.svd. On CPU a run axis costs the sum
    # of the single runs anyway.)
    hists = []
    for seed in range(cfg.seeds):
        hist, state = run(
            sim,
            data,
            test,
            rounds=cfg.rounds,
            key=jax.random.key(cell["seed0"] + seed),
            progress=cfg.progress,
            desc=f"  {partition}/{name} seed {seed}",
        )
        hists.append(hist)
    hist = {k: np.stack([np.asarray(h[k]) for h in hists]) for k in hists[0]}  # (S, T, ...)
    wall = time.perf_counter() - t0
    acc = 100.0 * np.asarray(hist["test_accuracy"])  # (S, T)
    # Server time: the jitted aggregate alone on the last broadcast plus a perturbation.
    clients = state.clients.lora  # one start shared by every client, or (m, ...) per client
    if abo.traits.one_start:
        clients = abo_jax.aggregation.broadcast_to_clients(clients, cfg.num_clients)
    noisy = jax.tree.map(
        lambda x: x + 1e-3 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), clients
    )
    w = jnp.full((cfg.num_clients,), 1.0 / cfg.num_clients)
    abo_state = state.abo_state
    agg = jax.jit(lambda c, s: abo.aggregate(c, w, s))
    jax.block_until_ready(agg(noisy, abo_state))
    times = []
    for _ in range(cfg.timing_repeats):
        t = time.perf_counter()
        jax.block_until_ready(agg(noisy, abo_state))
        times.append(time.perf_counter() - t)
    out = {
        "final_acc": acc[:, -1],
        "best_acc": acc.max(1),
        "curve": acc,
        "bytes_up_per_round": float(
            np.asarray(hist["abo/bytes_up"]).sum(-1).mean()
        ),  # sum clients, mean rounds/seeds
        "bytes_down_per_round": float(np.asarray(hist["abo/bytes_down"]).sum(-1).mean()),
        "server_ms": 1e3 * float(np.median(times)),
        "wall_seconds": wall,
        "mismatch": {},
    }
    for key in MISMATCH:
        if key in hist:
            out["mismatch"][key] = np.asarray(hist[key])  # (S, T), summed over layers
    return out


def run_name(cfg: OperatorsConfig) -> str:
    if cfg.name:
        return cfg.name
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress", "timing_repeats"):
        fields.pop(k)
    return f"operators-{cfg.dataset}-{config_hash(fields)}"


def run_operators(cfg: OperatorsConfig) -> dict:
    folder = results_dir(cfg.out, run_name(cfg))
    atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    cells = [
        {
            "partition": p,
            "op": op,
            "seed0": 0,
            "rounds": cfg.rounds,
            "seeds": cfg.seeds,
            "dataset": cfg.dataset,
            "rank": cfg.rank,
            "hetero": list(cfg.hetero_ranks),
            "clients": cfg.num_clients,
            "per_round": cfg.clients_per_round,
            "E": cfg.epochs,
            "hidden": list(cfg.hidden),
            "alpha": cfg.dirichlet_alpha,
        }
        for p in cfg.partitions
        for op in cfg.operators
    ]
    records, counts = run_grid(
        cells,
        lambda c: _run_cell(c, cfg),
        folder / "cells",
        desc="operators",
        show_progress=cfg.progress,
    )
    rows = []
    for rec in records:
        c, r = rec["cell"], rec["result"]
        fin, best = mean_ci(r["final_acc"]), mean_ci(r["best_acc"])
        row = {
            "partition": c["partition"],
            "operator": c["op"],
            "ranks": "/".join(map(str, c["hetero"]))
            if c["op"] in HETERO
            else ("full" if c["op"] == "fedavg_full" else str(c["rank"])),
            "final_mean": fin.mean,
            "final_lo": fin.lo,
            "final_hi": fin.hi,
            "best_mean": best.mean,
            "bytes_up_per_round": r["bytes_up_per_round"],
            "bytes_down_per_round": r["bytes_down_per_round"],
            "server_ms": r["server_ms"],
        }
        for key in MISMATCH:
            v = r["mismatch"].get(key)
            row[key] = float(np.mean(v)) if v is not None else float("nan")
        rows.append(row)
    atomic_write_csv(folder / "table.csv", rows)
    plots = _plots(cfg, records, rows, folder)
    return {"folder": folder, "rows": rows, "counts": counts, "plots": plots}


def _plots(cfg, records, rows, folder):
    paths = []
    for part in cfg.partitions:
        sub = [r for r in rows if r["partition"] == part]
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
        names = [r["operator"] for r in sub]
        means = np.array([r["final_mean"] for r in sub])
        err = np.array([r["final_hi"] - r["final_mean"] for r in sub])
        axes[0].bar(names, means, yerr=np.where(np.isfinite(err), err, 0.0), capsize=3)
        axes[0].set(ylabel="final test accuracy (%)", title=f"{cfg.dataset}, {part}: accuracy")
        axes[0].tick_params(axis="x", rotation=60)
        for rec in records:
            if rec["cell"]["partition"] != part:
                continue
            acc = np.asarray(rec["result"]["curve"])
            curves_with_band(axes[1], np.arange(1, acc.shape[1] + 1), acc, rec["cell"]["op"])
            rw = rec["result"]["mismatch"].get("weak_mismatch")
            if rw is not None:
                rw = np.maximum(np.asarray(rw, float), 1e-30)
                curves_with_band(
                    axes[2], np.arange(1, rw.shape[1] + 1), rw, rec["cell"]["op"], log=True
                )
        axes[1].set(xlabel="round", ylabel="test accuracy (%)", title="convergence")
        axes[1].legend(fontsize=7)
        axes[2].set(xlabel="round", title="weak mismatch R_w (sum over layers)")
        axes[2].legend(fontsize=7)
        paths.append(save(fig, folder / f"operators_{part}.png"))
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for r in sub:
            ax.scatter(r["bytes_up_per_round"] + r["bytes_down_per_round"], r["final_mean"])
            ax.annotate(
                r["operator"],
                (r["bytes_up_per_round"] + r["bytes_down_per_round"], r["final_mean"]),
                fontsize=7,
            )
        ax.set(
            xscale="log",
            xlabel="bytes per round (up + down, all clients)",
            ylabel="final test accuracy (%)",
            title=f"{part}: accuracy vs communication",
        )
        paths.append(save(fig, folder / f"bytes_{part}.png"))
    return paths


def print_table(rows) -> None:
    log(
        f"{'partition':<10} {'operator':<12} {'ranks':<7} {'final acc % [95% CI]':<24} "
        f"{'R_w':>9} {'R_B':>9} {'R_A':>9} {'up B/rd':>10} {'down B/rd':>10} {'server ms':>9}"
    )
    for r in rows:
        log(
            f"{r['partition']:<10} {r['operator']:<12} {r['ranks']:<7} "
            f"{r['final_mean']:6.2f} [{r['final_lo']:6.2f},{r['final_hi']:6.2f}]   "
            f"{r['weak_mismatch']:9.2e} {r['strong_mismatch_b']:9.2e} "
            f"{r['strong_mismatch_a']:9.2e} {r['bytes_up_per_round']:10.3g} "
            f"{r['bytes_down_per_round']:10.3g} {r['server_ms']:9.3f}"
        )


def main(argv=None) -> dict:
    cfg = parse_config(get_config, argv, __doc__.splitlines()[0], get_quick_config)
    result = run_operators(cfg)
    print_table(result["rows"])
    log(f"cells run now: {result['counts']['run']}, resumed: {result['counts']['skipped']}")
    log(f"results: {result['folder']}")
    return result
