"""Federated LoRA fine-tuning of pretrained MiniLM-L6 on fortunes topics, every operator.

Each cell is one operator: the pretrained encoder (:func:`abo_jax.models.minilm.load_minilm`,
hashes checked) with LoRA on its last ``lora_layers`` layers (:func:`abo_jax.models.bert.bert_lora_model`:
factored LoRA, the frozen prefix computed once per example), trained by abo_jax's simulator
(``make_simulation`` with one run per seed on the run axis, ``abo_jax.run`` with a checkpoint per
cell) on fortunes split over clients by the library's partitioners. ``theory.round_metrics``
runs inside the jitted round (the weak and strong mismatch terms per round). Bytes up and down
are the operator's own counts per client per round: the LoRA factors, the classification head
(every dense trainable leaf travels through the operator) and FedEx-LoRA's dense residual.

A finished cell is stored atomically in ``<run>/cells/`` and an unfinished one is checkpointed in
``<run>/partial/``; re-running the same command resumes from both. Outputs: ``table.csv``,
``summary.json``, ``curves.json`` and the plots ``accuracy.png``, ``bytes.png``,
``mismatch.png``, ``finetune.png`` (accuracy curves beside bytes per client per round).

Run ``python -m experiments.finetune --help``; ``--quick`` for a smoke run.

References:
  Hu et al., LoRA, arXiv:2106.09685. Chen et al., arXiv:2508.01348 (SP, PS, one class per client).
  The other operators' papers are cited by their factories in abo_jax.aggregation.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from abo_jax.data import (
    fortunes_clients,
    load_fortunes,
    make_partition,
    partition_topics,
    stratified_split,
)
from abo_jax.simulation import make_simulation, paper_sgd, run
from experiments.common import limit_blas_threads
from experiments.common.config import parse_config
from experiments.common.grid import cell_id, run_grid
from experiments.common.io import atomic_write_csv, atomic_write_json, config_hash, results_dir
from experiments.common.plotting import curves_with_band, plt, save
from experiments.common.progress import log
from experiments.common.stats import mean_ci
from experiments.finetune.config import FinetuneConfig, get_config, get_quick_config
from theory.functionals import round_metrics

__all__ = ["MISMATCH", "make_cells", "load_data", "run_finetune", "summarize", "main"]

HETERO = abo_jax.aggregation.RANKED_OPERATORS
#: per-round terms of ``theory.round_metrics`` stored per cell (summed over adapted layers):
#: ``R_w``, ``R_B``, ``R_A``, SP's discarded tail and PS's aggregation error (DESIGN.md)
MISMATCH = ("weak_mismatch", "strong_mismatch_b", "strong_mismatch_a", "sp_tail", "ps_error")
LABELS = {
    "sum_product": "SP",
    "product_sum": "PS",
    "fedex": "FedEx-LoRA",
    "flora": "FLoRA",
    "ffa": "FFA-LoRA",
    "rolora": "RoLoRA",
    "fedsa": "FedSA-LoRA",
    "hetlora": "HetLoRA",
    "rbla": "RBLA",
    "flexlora": "FlexLoRA",
    "fedavg_full": "FedAvg (full)",
}
CHECKPOINT_EVERY = 5  # rounds between checkpoints of an unfinished cell


def _bars(cfg: FinetuneConfig) -> bool:
    """Progress bars only on a terminal; a log file gets lines instead (see ``log_every``)."""
    return bool(cfg.progress and sys.stderr.isatty())


def client_ranks(cfg: FinetuneConfig) -> np.ndarray:
    """``hetero_ranks`` cycled over the clients."""
    return np.array([cfg.hetero_ranks[i % len(cfg.hetero_ranks)] for i in range(cfg.num_clients)])


def make_cells(cfg: FinetuneConfig) -> list[dict]:
    """One cell per operator, with everything that defines its numbers."""
    common = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("operators", "out", "name", "progress", "log_every", "level")
    }
    common["hetero_ranks"] = list(cfg.hetero_ranks)
    common["targets"] = list(cfg.targets)
    return [{"op": op, **common} for op in cfg.operators]


class _Data:
    """The encoder, tokenizer and tokenized client data, loaded once per process."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg, self.value = cfg, None

    def get(self):
        if self.value is None:
            self.value = load_data(self.cfg)
        return self.value


def load_data(cfg: FinetuneConfig) -> dict:
    """Loads MiniLM and fortunes, splits the training texts over clients, tokenizes once.

    Returns:
      ``{"bert": (config, params), "clients": TextClients, "topics": names, "num_layers": n}``.
    """
    from abo_jax.models.minilm import load_minilm, tokenize

    bert_config, params, tokenizer = load_minilm()
    ds = load_fortunes(
        cfg.data_dir or None,
        num_topics=cfg.num_topics,
        max_chars=cfg.max_chars or None,
        test_fraction=cfg.test_fraction,
        seed=0,
    )
    if cfg.max_test and cfg.max_test < len(ds.y_test):
        _, keep = stratified_split(ds.y_test, cfg.max_test / len(ds.y_test), seed=1)
        ds = ds._replace(texts_test=tuple(ds.texts_test[i] for i in keep), y_test=ds.y_test[keep])
    part = partition_topics(
        ds.y_train,
        cfg.partition,
        num_clients=cfg.num_clients,
        key=0,
        alpha=cfg.dirichlet_alpha,
        beta=cfg.quantity_beta,
    )
    if cfg.max_per_client:  # a random subset of each client's texts
        rng = np.random.default_rng(2)
        capped = [rng.permutation(idx)[: cfg.max_per_client] for idx in part.indices]
        part = make_partition(capped, ds.y_train, num_classes=ds.num_classes, scheme=part.scheme)
    clients = fortunes_clients(ds, lambda texts: tokenize(tokenizer, texts, cfg.max_len), part)
    num_layers = cfg.num_layers or bert_config.num_hidden_layers
    if cfg.lora_layers > num_layers:
        raise ValueError(f"--lora-layers: at most {num_layers} (the encoder's layers)")
    return {
        "bert": (bert_config, params),
        "clients": clients,
        "topics": ds.topics,
        "num_layers": num_layers,
    }


def _optimizer(cell: dict):
    if cell["optimizer"] == "adamw":
        return optax.adamw(cell["lr"], weight_decay=cell["weight_decay"])
    return paper_sgd(cell["lr"], 0.9, cell["weight_decay"])


def _metrics_fn(scale: float):
    def metrics(clients, weights, broadcast):
        out = round_metrics(clients, weights, broadcast, scale=scale)
        return {name: out[name] for name in MISMATCH}

    return metrics


def _tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _run_cell(cell: dict, cache: _Data, cfg: FinetuneConfig, folder) -> dict:
    from abo_jax.models.bert import bert_lora_model

    limit_blas_threads(1)
    loaded = cache.get()
    bert_config, params = loaded["bert"]
    clients = loaded["clients"]
    op, num_layers = cell["op"], loaded["num_layers"]
    hetero = op in HETERO
    rank = max(cell["hetero_ranks"]) if hetero else cell["rank"]
    model = bert_lora_model(
        bert_config,
        params,
        len(loaded["topics"]),
        ranks=rank,
        targets=tuple(cell["targets"]),
        lora_from_layer=num_layers - cell["lora_layers"],
        num_layers=num_layers,
        max_len=cell["max_len"],
    )
    abo = abo_jax.make_operator(op, client_ranks=client_ranks(cfg) if hetero else None)
    scale = abo.traits.lora_scale
    scale = float(scale) if isinstance(scale, int | float) else 1.0
    sim = make_simulation(
        model,
        abo,
        optimizer=_optimizer(cell),
        local_epochs=cell["epochs"],
        batch_size=cell["batch_size"],
        metrics_fn=_metrics_fn(scale),
        num_runs=cell["seeds"],
    )  # ranks, scales, frozen factors and personalization come from the operator's traits
    partial = folder / "partial" / f"{cell_id(cell)}.ckpt"
    partial.parent.mkdir(parents=True, exist_ok=True)
    keys = jnp.stack([jax.random.key(s) for s in range(cell["seeds"])])
    desc = f"  {LABELS.get(op, op)}"
    rounds = cell["rounds"]

    def on_round(r, state, record):
        if not _bars(cfg) and cfg.progress and (r % cfg.log_every == 0 or r == rounds):
            acc = 100.0 * np.mean(np.asarray(record["test_accuracy"]))
            log(f"{desc}: round {r}/{rounds}, test accuracy {acc:.1f}% (mean over seeds)")

    t0 = time.perf_counter()
    history, state = run(
        sim,
        clients.train,
        (clients.x_test, clients.y_test),
        rounds=rounds,
        key=keys,
        progress=_bars(cfg),
        desc=desc,
        checkpoint_path=partial,
        checkpoint_every=CHECKPOINT_EVERY,
        callback=on_round,
        fingerprint=cell,
    )
    wall = time.perf_counter() - t0
    partial.unlink(missing_ok=True)
    acc = 100.0 * np.asarray(history["test_accuracy"], float).T  # (seeds, rounds)
    up = np.asarray(history["abo/bytes_up"], float)  # (rounds, seeds, m)
    down = np.asarray(history["abo/bytes_down"], float)
    _, trainable = model.init(jax.random.key(0))
    out = {
        "final_acc": acc[:, -1],
        "best_acc": acc.max(axis=1),
        "curves": {
            "test_acc": acc,
            "test_loss": np.asarray(history["test_loss"], float).T,
            "train_loss": np.asarray(history["train_loss"], float).T,
        },
        # per participating client per round (every client takes part), mean over rounds/seeds
        "bytes_up_per_client": float(up.mean()),
        "bytes_down_per_client": float(down.mean()),
        "head_bytes": _tree_bytes(trainable.extra),
        "lora_bytes_at_rank": _tree_bytes(trainable.lora),
        "mismatch": {k: np.asarray(history[k], float).T for k in MISMATCH if k in history},
        "personalized": bool(abo.traits.personalized),
        "client_ranks": client_ranks(cfg).tolist() if hetero else [rank] * cfg.num_clients,
        "seconds_per_round": wall / max(1, rounds),
        "wall_seconds": wall,
    }
    fin = mean_ci(out["final_acc"], cfg.level)
    log(
        f"{desc}: done, final test accuracy {fin.mean:.1f}% [{fin.lo:.1f}, {fin.hi:.1f}], "
        f"{out['seconds_per_round']:.1f} s/round"
    )
    return out


def summarize(records: list[dict], level: float = 0.95) -> list[dict]:
    """One row per operator: accuracy over seeds (mean, interval), bytes, mismatch, time."""
    rows = []
    for rec in records:
        c, r = rec["cell"], rec["result"]
        fin, best = mean_ci(r["final_acc"], level), mean_ci(r["best_acc"], level)
        ranks = sorted(set(r["client_ranks"]))
        row = {
            "operator": c["op"],
            "label": LABELS.get(c["op"], c["op"]),
            "ranks": "/".join(map(str, ranks)),
            "seeds": fin.n,
            "rounds": c["rounds"],
            "final_mean": fin.mean,
            "final_lo": fin.lo,
            "final_hi": fin.hi,
            "best_mean": best.mean,
            "best_lo": best.lo,
            "best_hi": best.hi,
            "bytes_up_per_client_round": r["bytes_up_per_client"],
            "bytes_down_per_client_round": r["bytes_down_per_client"],
            "head_bytes": r["head_bytes"],
            "evaluation": "per client" if r["personalized"] else "global",
            "seconds_per_round": r["seconds_per_round"],
        }
        for key in MISMATCH:
            v = r["mismatch"].get(key)
            row[key] = float(np.mean(v)) if v is not None else float("nan")
        rows.append(row)
    return rows


def make_plots(cfg: FinetuneConfig, records: list[dict], rows: list[dict], folder) -> list:
    """Accuracy curves, bytes up/down per client per round, mismatch terms, and a summary."""
    paths = []

    def accuracy(ax):
        for rec in records:
            acc = np.asarray(rec["result"]["curves"]["test_acc"], float)
            label = LABELS.get(rec["cell"]["op"], rec["cell"]["op"])
            curves_with_band(ax, np.arange(1, acc.shape[1] + 1), acc, label, level=cfg.level)
        ax.set(
            xlabel="round",
            ylabel="test accuracy (%)",
            title=f"{cfg.partition}, {cfg.num_clients} clients, {cfg.seeds} seeds "
            f"(mean, {cfg.level:.0%} band)",
        )
        ax.legend(fontsize=7)

    def communication(ax):
        names = [r["label"] for r in rows]
        x = np.arange(len(rows))
        up = np.array([r["bytes_up_per_client_round"] for r in rows])
        down = np.array([r["bytes_down_per_client_round"] for r in rows])
        ax.bar(x - 0.2, up, 0.4, label="up")
        ax.bar(x + 0.2, down, 0.4, label="down")
        ax.axhline(rows[0]["head_bytes"], color="gray", ls=":", lw=1, label="head alone")
        ax.set_xticks(x, names, rotation=60, fontsize=8)
        ax.set(yscale="log", ylabel="bytes per client per round", title="communication")
        ax.legend(fontsize=7)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    accuracy(ax)
    paths.append(save(fig, folder / "accuracy.png"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    communication(ax)
    paths.append(save(fig, folder / "bytes.png"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(
        axes,
        MISMATCH[:3],
        ("weak mismatch R_w", "strong mismatch R_B", "strong mismatch R_A"),
        strict=True,
    ):
        for rec in records:
            v = rec["result"]["mismatch"].get(key)
            if v is None:
                continue
            v = np.maximum(np.asarray(v, float), 1e-30)
            label = LABELS.get(rec["cell"]["op"], rec["cell"]["op"])
            curves_with_band(ax, np.arange(1, v.shape[1] + 1), v, label, log=True)
        ax.set(xlabel="round", title=f"{title} (sum over layers)")
        ax.legend(fontsize=6)
    paths.append(save(fig, folder / "mismatch.png"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    accuracy(axes[0])
    communication(axes[1])
    fig.suptitle(
        f"MiniLM-L6, LoRA r={cfg.rank} on {'/'.join(cfg.targets)} of the last {cfg.lora_layers} "
        f"layer(s), {cfg.max_len} tokens, fortunes ({cfg.num_topics} topics)"
    )
    paths.append(save(fig, folder / "finetune.png"))
    return paths


def run_name(cfg: FinetuneConfig) -> str:
    if cfg.name:
        return cfg.name
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress", "log_every", "level", "operators"):
        fields.pop(k)
    return f"finetune-{cfg.partition}-{config_hash(fields)}"


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Runs (or resumes) every operator's cell; writes table.csv, summary.json, curves.json and
    the plots.

    Returns:
      ``{"folder", "rows", "records", "counts", "plots"}``.
    """
    cfg.validate()
    folder = results_dir(cfg.out, run_name(cfg))
    atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    cache = _Data(cfg)
    records, counts = run_grid(
        make_cells(cfg),
        functools.partial(_run_cell, cache=cache, cfg=cfg, folder=folder),
        folder / "cells",
        desc="finetune",
        show_progress=_bars(cfg),
    )
    rows = summarize(records, cfg.level)
    atomic_write_csv(folder / "table.csv", rows)
    atomic_write_json(folder / "summary.json", {"config": dataclasses.asdict(cfg), "rows": rows})
    atomic_write_json(
        folder / "curves.json",
        {
            rec["cell"]["op"]: {
                "test_acc": rec["result"]["curves"]["test_acc"],
                **{k: rec["result"]["mismatch"][k] for k in rec["result"]["mismatch"]},
            }
            for rec in records
        },
    )
    plots = make_plots(cfg, records, rows, folder)
    return {"folder": folder, "rows": rows, "records": records, "counts": counts, "plots": plots}


def print_table(rows: list[dict], level: float) -> None:
    log(
        f"{'operator':<14}{'ranks':<7}{f'final acc % [{level:.0%} CI]':<26}{'best %':>7}"
        f"{'up B/client':>13}{'down B/client':>15}{'R_w':>10}{'R_B':>10}{'s/round':>9}"
    )
    for r in rows:
        log(
            f"{r['label']:<14}{r['ranks']:<7}{r['final_mean']:6.2f} "
            f"[{r['final_lo']:6.2f},{r['final_hi']:6.2f}]     {r['best_mean']:7.2f}"
            f"{r['bytes_up_per_client_round']:13.4g}{r['bytes_down_per_client_round']:15.4g}"
            f"{r['weak_mismatch']:10.2e}{r['strong_mismatch_b']:10.2e}"
            f"{r['seconds_per_round']:9.2f}"
        )


def main(argv=None) -> dict:
    cfg = parse_config(get_config, argv, __doc__.splitlines()[0], get_quick_config)
    result = run_finetune(cfg)
    print_table(result["rows"], cfg.level)
    c = result["counts"]
    log(f"cells run now: {c['run']}, resumed from disk: {c['skipped']}")
    log(f"results: {result['folder']}")
    return result
