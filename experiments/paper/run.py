"""The paper's rank-ratio x local-epoch grid for SP and PS, resumable, with plots and the verdict.

Run ``python -m experiments.paper --help``. Each (data set, operator, delta, E) cell trains all its
seeds at once on abo_jax's simulator (``make_simulation`` with a run axis of one run per seed: one
jitted, vmapped round per cell) with ``theory.round_metrics`` in the round. A finished cell is stored
atomically in ``<run>/cells/``; an unfinished one is checkpointed every few rounds in
``<run>/partial/``. Re-running the same command resumes from both.

Reference: Chen et al., arXiv:2508.01348, Figure 1.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.aggregation import product_sum, sum_product
from abo_jax.models.mlp import paper_mlp, paper_mlp_ranks
from abo_jax.simulation import make_simulation, paper_sgd, run
from experiments.common import limit_blas_threads
from experiments.common.config import parse_config
from experiments.common.datasets import load_dataset, one_class_per_client, pad_clients
from experiments.common.grid import cell_id, run_grid
from experiments.common.io import atomic_write_csv, atomic_write_json, config_hash, results_dir
from experiments.common.plotting import curves_with_band, heatmap_triptych, plt, save
from experiments.common.progress import log
from experiments.common.stats import mean_ci
from experiments.devices import host_mesh, mesh_devices, use_host_devices
from experiments.paper.claim import claim_verdict, format_verdict
from experiments.paper.config import PaperConfig, get_config, get_quick_config
from theory.functionals import round_metrics

__all__ = [
    "OPERATORS",
    "MISMATCH_TERMS",
    "paper_ranks",
    "rounds_for",
    "make_cells",
    "run_paper",
    "summarize",
    "main",
]

OPERATORS = {"sp": sum_product, "ps": product_sum}
#: The per-round mismatch terms plotted and stored per cell, and their ``theory.round_metrics``
#: names: ``R_w = sum_i p_i ||P_i Q_i - B_i A_i||^2``, ``R_B``, ``R_A`` (the strong condition's
#: factor mismatches), SP's discarded tail ``sum_{j>r} s_j(Zbar)^2`` and PS's aggregation error
#: ``||Zbar - Bbar Abar||^2`` (DESIGN.md).
MISMATCH_TERMS = {
    "R_w": "weak_mismatch",
    "R_B": "strong_mismatch_b",
    "R_A": "strong_mismatch_a",
    "sp_tail": "sp_tail",
    "ps_error": "ps_error",
}
CHECKPOINT_EVERY = 10  # rounds between checkpoints of an unfinished cell


def paper_ranks(delta: float, num_hidden: int = 2) -> tuple[int, ...]:
    """The paper's ranks for ``num_hidden`` hidden layers: ``int(160 delta)`` each, then
    ``int(100 delta)`` for the output layer (at least 1), as :func:`abo_jax.paper_mlp_ranks`.

    Example:
      >>> paper_ranks(0.07)
      (11, 11, 7)
    """
    hidden, _, last = paper_mlp_ranks(delta)
    return (hidden,) * num_hidden + (last,)


def rounds_for(cfg: PaperConfig, epochs: int) -> int:
    """``round(base_rounds / E * rounds_scale)``, at least 1 (300/E rounds in the paper)."""
    return max(1, int(round(cfg.base_rounds / epochs * cfg.rounds_scale)))


def _cell_order(cfg: PaperConfig) -> list[tuple[float, int]]:
    """Claim-critical cells first (so a partial grid already gives a verdict), then the rest."""
    dl, dh = min(cfg.deltas), max(cfg.deltas)
    el, eh = min(cfg.epochs), max(cfg.epochs)
    first = [(dh, el), (dl, el), (dh, eh)]
    rest = [(d, e) for e in sorted(cfg.epochs) for d in sorted(cfg.deltas, reverse=True)]
    return list(dict.fromkeys(first + rest))


def make_cells(cfg: PaperConfig) -> list[dict]:
    """One cell per (data set, delta, E, operator), in run order, with everything that defines it."""
    common = {
        "seeds": cfg.seeds,
        "clients": cfg.num_clients,
        "hidden": list(cfg.hidden),
        "batch": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "wd": cfg.weight_decay,
        "max_per_client": cfg.max_per_client,
        "max_test": cfg.max_test,
    }
    cells = []
    for ds in cfg.datasets:
        for delta, e in _cell_order(cfg):
            for op in cfg.operators:
                if op not in OPERATORS:
                    raise ValueError(f"operators: expected names in {list(OPERATORS)}, got {op!r}")
                cells.append(
                    {
                        "dataset": ds,
                        "op": op,
                        "delta": float(delta),
                        "E": int(e),
                        "rounds": rounds_for(cfg, e),
                        **common,
                    }
                )
    return cells


class _DataCache:
    def __init__(self, cfg: PaperConfig):
        self.cfg, self.cache = cfg, {}

    def get(self, name: str):
        if name not in self.cache:
            ds = load_dataset(name, self.cfg.data_dir or None)
            parts = one_class_per_client(ds.y_train, self.cfg.num_clients)
            if self.cfg.max_per_client:
                parts = [p[: self.cfg.max_per_client] for p in parts]
            data = pad_clients(ds.x_train, ds.y_train, parts, multiple=self.cfg.batch_size)
            n_test = self.cfg.max_test or len(ds.y_test)
            # The first n_test test examples when capped (the test files are not sorted by class).
            idx = np.arange(len(ds.y_test))[:n_test]
            self.cache[name] = (data, ds.x_test[idx], ds.y_test[idx], ds.num_classes)
        return self.cache[name]


def _metrics_fn(clients, weights, broadcast):
    out = round_metrics(clients, weights, broadcast)
    return {name: out[name + "_layers"] for name in MISMATCH_TERMS.values()}


def _run_cell(cell: dict, data_cache: _DataCache, progress: bool, folder: Path, mesh=None) -> dict:
    """Trains one cell (every seed at once on the simulator's run axis) and returns its results.

    Seed ``s`` uses ``jax.random.key(s)`` (base weights, LoRA init, shuffles), so a cell with more
    seeds extends, not changes, one with fewer. ``mesh``: a ``("clients",)`` mesh to shard each
    round's clients over (``--host-devices``), or None.
    """
    limit_blas_threads(1)
    data, tx, ty, classes = data_cache.get(cell["dataset"])
    hidden = tuple(cell["hidden"])
    ranks = paper_ranks(cell["delta"], len(hidden))
    model = paper_mlp(data.x.shape[-1], hidden, classes, ranks=ranks)
    seeds = cell["seeds"]
    sim = make_simulation(
        model,
        OPERATORS[cell["op"]](),
        optimizer=paper_sgd(cell["lr"], cell["momentum"], cell["wd"]),
        local_epochs=cell["E"],
        batch_size=cell["batch"],
        metrics_fn=_metrics_fn,
        num_runs=seeds,
        mesh=mesh,
    )
    partial = folder / "partial" / f"{cell_id(cell)}.ckpt"
    partial.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history, _ = run(
        sim,
        data,
        (tx, ty),
        rounds=cell["rounds"],
        key=jnp.stack([jax.random.key(s) for s in range(seeds)]),
        progress=progress,
        desc=f"  {cell['op']} delta={cell['delta']} E={cell['E']}",
        checkpoint_path=partial,
        checkpoint_every=CHECKPOINT_EVERY,
    )
    wall = time.perf_counter() - t0
    partial.unlink(missing_ok=True)
    acc = 100.0 * np.asarray(history["test_accuracy"], float).T  # (seeds, rounds), percent
    return {
        "ranks": list(ranks),
        "best_acc": acc.max(axis=1),
        "final_acc": acc[:, -1],
        "best_round": acc.argmax(axis=1) + 1,
        "curves": {
            "test_acc": acc,
            "test_loss": np.asarray(history["test_loss"]).T,
            "train_loss": np.asarray(history["train_loss"]).T,
        },
        # (seeds, rounds, layers) per term
        "metrics": {
            term: np.moveaxis(np.asarray(history[name]), 0, 1)
            for term, name in MISMATCH_TERMS.items()
        },
        "seconds_per_round": wall / cell["rounds"],
        "wall_seconds": wall,
        "devices": 1 if mesh is None else int(mesh.devices.size),
    }


def summarize(records: list[dict], level: float = 0.95) -> list[dict]:
    """One row per cell: mean and interval of best and final accuracy over seeds."""
    rows = []
    for rec in records:
        c, r = rec["cell"], rec["result"]
        best, final = mean_ci(r["best_acc"], level), mean_ci(r["final_acc"], level)
        rows.append(
            {
                "dataset": c["dataset"],
                "op": c["op"],
                "delta": c["delta"],
                "E": c["E"],
                "rounds": c["rounds"],
                "ranks": "-".join(map(str, r["ranks"])),
                "seeds": best.n,
                "best_mean": best.mean,
                "best_lo": best.lo,
                "best_hi": best.hi,
                "final_mean": final.mean,
                "final_lo": final.lo,
                "final_hi": final.hi,
                "seconds_per_round": r["seconds_per_round"],
            }
        )
    return rows


def _grid(records, dataset, op, key, deltas, epochs):
    g = np.full((len(epochs), len(deltas)), np.nan)
    for rec in records:
        c = rec["cell"]
        if c["dataset"] == dataset and c["op"] == op:
            g[epochs.index(c["E"]), deltas.index(c["delta"])] = np.mean(rec["result"][key])
    return g


def _curve_cells(cfg: PaperConfig) -> list[tuple[int, float]]:
    if cfg.curve_cells != "auto":
        out = []
        for item in cfg.curve_cells.split(";"):
            e, d = item.split(":")
            out.append((int(e), float(d)))
        return out
    dl, dh, el, eh = min(cfg.deltas), max(cfg.deltas), min(cfg.epochs), max(cfg.epochs)
    return list(dict.fromkeys([(el, dl), (el, dh), (eh, dh)]))


def make_plots(cfg: PaperConfig, records: list[dict], folder: Path) -> list[Path]:
    """Heatmaps (SP, PS, SP-PS) of best and final accuracy, curves, and mismatch terms."""
    paths = []
    deltas, epochs = sorted(cfg.deltas), sorted(cfg.epochs)
    sp, ps = "sp", "ps"
    for ds in cfg.datasets:
        for key, label in (("best_acc", "best"), ("final_acc", "final")):
            fig = heatmap_triptych(
                _grid(records, ds, sp, key, deltas, epochs),
                _grid(records, ds, ps, key, deltas, epochs),
                deltas,
                epochs,
                suptitle=f"{ds}: {label} test accuracy (%), mean of {cfg.seeds} seeds",
            )
            paths.append(save(fig, folder / f"heatmap_{ds}_{label}.png"))
        by_key = {
            (r["cell"]["dataset"], r["cell"]["op"], r["cell"]["E"], r["cell"]["delta"]): r
            for r in records
        }
        for e, d in _curve_cells(cfg):
            cells = {op: by_key.get((ds, op, e, d)) for op in cfg.operators}
            if any(v is None for v in cells.values()):
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for op, rec in cells.items():
                acc = np.asarray(rec["result"]["curves"]["test_acc"])
                curves_with_band(ax, np.arange(1, acc.shape[1] + 1), acc, op.upper())
            ax.set(
                xlabel="round",
                ylabel="test accuracy (%)",
                title=f"{ds}: E={e}, delta={d} (mean, {cfg.level:.0%} band)",
            )
            ax.legend()
            paths.append(save(fig, folder / f"curves_{ds}_E{e}_d{d}.png"))
            fig, axes = plt.subplots(1, len(MISMATCH_TERMS), figsize=(4 * len(MISMATCH_TERMS), 3.6))
            for ax, term in zip(axes, MISMATCH_TERMS, strict=True):
                for op, rec in cells.items():
                    val = np.asarray(rec["result"]["metrics"][term], float).sum(-1)  # over layers
                    val = np.maximum(val, 1e-30)
                    curves_with_band(ax, np.arange(1, val.shape[1] + 1), val, op.upper(), log=True)
                ax.set(title=term + " (sum over layers)", xlabel="round")
                ax.legend()
            fig.suptitle(f"{ds}: mismatch terms per round, E={e}, delta={d}")
            paths.append(save(fig, folder / f"mismatch_{ds}_E{e}_d{d}.png"))
    return paths


def verdicts(cfg: PaperConfig, records: list[dict]) -> dict:
    """Claim verdict per data set on the paper's statistic (best accuracy) and on final accuracy."""
    out = {}
    for ds in cfg.datasets:
        out[ds] = {}
        for key in ("best_acc", "final_acc"):
            values = {
                (r["cell"]["op"], r["cell"]["delta"], r["cell"]["E"]): np.asarray(r["result"][key])
                for r in records
                if r["cell"]["dataset"] == ds
            }
            out[ds][key] = claim_verdict(values, level=cfg.level)
    return out


def run_name(cfg: PaperConfig) -> str:
    if cfg.name:
        return cfg.name
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress", "curve_cells", "level"):
        fields.pop(k)
    if fields["host_devices"] == 1:  # the folders of runs from before the option keep their names
        fields.pop("host_devices")
    return f"paper-{'-'.join(cfg.datasets)}-{config_hash(fields)}"


def run_paper(cfg: PaperConfig) -> dict:
    """Runs (or resumes) the grid, writes summary.csv, verdict.json and the plots.

    Returns:
      ``{"folder": Path, "rows": summary rows, "verdict": per data set, "counts": run/skipped,
      "plots": [paths]}``.
    """
    use_host_devices(cfg.host_devices)  # before any JAX computation in this process
    mesh = host_mesh(mesh_devices(cfg.num_clients)) if cfg.host_devices > 1 else None
    folder = results_dir(cfg.out, run_name(cfg))
    atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    cache = _DataCache(cfg)
    t0 = time.perf_counter()
    records, counts = run_grid(
        make_cells(cfg),
        lambda c: _run_cell(c, cache, cfg.progress, folder, mesh),
        folder / "cells",
        desc="paper grid",
        show_progress=cfg.progress,
    )
    wall = time.perf_counter() - t0
    rows = summarize(records, cfg.level)
    atomic_write_csv(folder / "summary.csv", rows)
    verdict = verdicts(cfg, records)
    atomic_write_json(folder / "verdict.json", verdict)
    plots = make_plots(cfg, records, folder)
    atomic_write_json(
        folder / "run.json", {"wall_seconds_this_invocation": wall, **counts, "cells": len(records)}
    )
    return {
        "folder": folder,
        "rows": rows,
        "verdict": verdict,
        "counts": counts,
        "plots": plots,
        "wall_seconds": wall,
    }


def print_report(cfg: PaperConfig, result: dict) -> None:
    log(
        f"{'dataset':<14}{'op':<4}{'delta':>6}{'E':>4}{'rounds':>7}  best acc % [95% CI]"
        "        final acc % [95% CI]"
    )
    for r in result["rows"]:
        log(
            f"{r['dataset']:<14}{r['op']:<4}{r['delta']:>6}{r['E']:>4}{r['rounds']:>7}  "
            f"{r['best_mean']:6.2f} [{r['best_lo']:6.2f},{r['best_hi']:6.2f}]   "
            f"{r['final_mean']:6.2f} [{r['final_lo']:6.2f},{r['final_hi']:6.2f}]"
        )
    for ds, v in result["verdict"].items():
        log(format_verdict(v["best_acc"], f"{ds} (best accuracy, the paper's statistic)"))
        log(format_verdict(v["final_acc"], f"{ds} (final accuracy)"))
    c = result["counts"]
    log(
        f"cells run now: {c['run']}, resumed from disk: {c['skipped']}; "
        f"wall {result['wall_seconds']:.0f} s"
    )
    log(f"results: {result['folder']}")


def main(argv=None) -> dict:
    cfg = parse_config(get_config, argv, __doc__.splitlines()[0], get_quick_config)
    result = run_paper(cfg)
    print_report(cfg, result)
    return result
