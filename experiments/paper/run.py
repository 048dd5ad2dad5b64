"""The paper's rank-ratio x local-epoch grid for SP and PS, resumable, with plots and the verdict.

Run ``python -m experiments.paper --help`` (``--protocol paper`` for the authors' protocol, see
:mod:`experiments.paper.config`). Each (data set, operator, delta, E) cell trains all its seeds at
once on abo_jax's simulator (``make_simulation`` with a run axis of one run per seed: one jitted,
vmapped round per cell), with ``theory.round_metrics`` in the round for the cells whose mismatch
terms are plotted. ``rounds_per_dispatch`` rounds, each followed by the global model's evaluation
on the test set, run in one jitted loop (one host round trip per chunk, one compiled program per
cell whatever the chunk lengths). A finished cell is stored atomically in ``<run>/cells/``; an
unfinished one is checkpointed after every chunk in ``<run>/partial/``. Re-running the same command
resumes from both.

Seeds: a cell's seeds share one vmapped program, so a seed inside a multi-seed run does not give
the same float32 numbers as that seed run alone (the run axis changes XLA's reduction order and
training amplifies the last bits); its statistics agree only up to seed-level noise.

Reference: Chen et al., arXiv:2508.01348, Figure 1.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from abo_jax.aggregation import product_sum, sum_product
from abo_jax.distributed import distributed_from_env, fetch, is_primary
from abo_jax.models.mlp import paper_mlp, paper_mlp_ranks
from abo_jax.simulation import make_simulation, paper_sgd, run
from abo_jax.simulation.checkpoint import (
    CheckpointError,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
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
from experiments.paper.config import PROTOCOLS, PaperConfig, get_config, get_quick_config
from theory.functionals import round_metrics

__all__ = [
    "OPERATORS",
    "MISMATCH_TERMS",
    "paper_ranks",
    "rounds_for",
    "make_cells",
    "run_paper",
    "summarize",
    "train_in_chunks",
    "make_cell_simulation",
    "normalization_for",
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
CHECKPOINT_EVERY = 10  # rounds between checkpoints of an unfinished cell (rounds_per_dispatch 1)
#: The statistics reported per cell (keys of a cell's result), with their names in reports.
STATISTICS = {"best_acc": "best", "final_acc": "final", "lastk_acc": "mean of last k"}


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
    """``round(base_rounds / E * rounds_scale)``, at least 1, plus 1 under the paper protocol.

    The authors' loop is ``for round in range(training_rounds + 1)`` with round 0 a training round:
    301 rounds at E = 1, 31 at E = 10. The project protocol runs ``300 / E``.
    """
    rounds = max(1, int(round(cfg.base_rounds / epochs * cfg.rounds_scale)))
    return rounds + 1 if cfg.protocol == "paper" else rounds


def normalization_for(cfg: PaperConfig, dataset: str) -> str:
    """The input normalization of ``dataset`` under ``cfg``: digits, which has no authors'
    constants, is standardized when ``cfg.normalization == "paper"``."""
    if cfg.normalization == "paper" and dataset == "digits":
        return "standardize"
    return cfg.normalization


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
    curves = set(_curve_cells(cfg))
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
                        "normalization": normalization_for(cfg, ds),
                        "mismatch": cfg.mismatch == "all"
                        or (cfg.mismatch == "curves" and (int(e), float(delta)) in curves),
                        **common,
                    }
                )
    return cells


class _DataCache:
    def __init__(self, cfg: PaperConfig):
        self.cfg, self.cache = cfg, {}

    def get(self, name: str):
        if name not in self.cache:
            ds = load_dataset(name, self.cfg.data_dir or None, normalization_for(self.cfg, name))
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


def _chunk_program(sim, chunk: int):
    """One jitted loop of up to ``chunk`` rounds, each followed by the test evaluation.

    ``n`` (``<= chunk``) is a traced loop count, so every chunk length of a cell runs the same
    compiled program; records past ``n`` are zeros and dropped by the caller.
    """

    def one(state, data, inputs, x, y, test_inputs):
        state, metrics = sim.round_step(state, data, inputs)
        ev = sim.evaluate(state, x, y, test_inputs)
        return state, {**metrics, "test_accuracy": ev["accuracy"], "test_loss": ev["loss"]}

    def loop(state, data, inputs, x, y, test_inputs, n):
        _, shapes = jax.eval_shape(one, state, data, inputs, x, y, test_inputs)
        out = jax.tree.map(lambda t: jnp.zeros((chunk, *t.shape), t.dtype), shapes)

        def body(i, carry):
            state, out = carry
            state, rec = one(state, data, inputs, x, y, test_inputs)
            out = jax.tree.map(
                lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, i, 0), out, rec
            )
            return state, out

        return jax.lax.fori_loop(0, n, body, (state, out))

    return jax.jit(loop)


def train_in_chunks(
    sim,
    data,
    test,
    *,
    rounds: int,
    key,
    chunk: int,
    checkpoint_path=None,
    progress=False,
    desc=None,
    callback=None,
) -> dict[str, np.ndarray]:
    """``rounds`` rounds with a test evaluation after each, ``chunk`` rounds per dispatch.

    The same rounds and evaluations as :func:`abo_jax.run` with ``eval_every=1`` (equal up to float32
    order: XLA compiles the loop body as one program). With ``checkpoint_path`` the state and the
    history are saved after every chunk and a run resumes from them. ``callback(rounds_done)`` is
    called after every stored chunk.

    Returns:
      The history: each metric as a numpy array ``(rounds, ...)`` (a run axis follows the round
      axis with ``sim.num_runs``).
    """
    from tqdm import tqdm

    x_test, y_test = test
    state = sim.init(key, data)
    history: list[dict] = []
    fingerprint = None
    if checkpoint_path is not None:  # what defines the run, compared on resume (abo_jax.run's)
        fingerprint = run_fingerprint(sim, state, data, test, options={"loop": "train_in_chunks"})
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state, history, _ = load_checkpoint(checkpoint_path, state, fingerprint=fingerprint)
    done = sum(len(h["round"]) for h in history)
    if done > rounds:
        raise CheckpointError(
            checkpoint_path, f"it holds {done} rounds, more than rounds={rounds} asks for"
        )
    data = sim.shard(data, "data")
    state = sim.shard(state, "state")
    inputs = sim.shard(sim.prepare(state, data), "inputs")
    x_test, y_test = sim.shard((x_test, y_test), "test")
    test_inputs = None if sim.prepare_test is None else sim.prepare_test(state, x_test)
    program = _chunk_program(sim, int(chunk))
    bar = tqdm(
        total=rounds, initial=done, disable=not (progress and is_primary()), desc=desc, leave=False
    )
    try:
        while done < rounds:
            n = min(int(chunk), rounds - done)
            state, out = program(state, data, inputs, x_test, y_test, test_inputs, jnp.int32(n))
            rec = {k: np.asarray(v)[:n] for k, v in fetch(out).items()}
            rec["round"] = np.arange(done + 1, done + n + 1)
            history.append(rec)
            done += n
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, state, history=history, fingerprint=fingerprint)
            bar.update(n)
            if callback is not None:
                callback(done)
    finally:
        bar.close()
    return {k: np.concatenate([h[k] for h in history]) for k in history[0]}


def make_cell_simulation(cell: dict, in_features: int, classes: int, mesh=None):
    """The simulator of one cell: the paper's MLP at the cell's ranks, its operator and SGD, one
    run per seed, with :func:`theory.round_metrics` in the round when the cell records them."""
    hidden = tuple(cell["hidden"])
    model = paper_mlp(in_features, hidden, classes, ranks=paper_ranks(cell["delta"], len(hidden)))
    return make_simulation(
        model,
        OPERATORS[cell["op"]](),
        optimizer=paper_sgd(cell["lr"], cell["momentum"], cell["wd"]),
        local_epochs=cell["E"],
        batch_size=cell["batch"],
        metrics_fn=_metrics_fn if cell.get("mismatch", True) else None,
        num_runs=cell["seeds"],
        mesh=mesh,
    )


def _run_cell(
    cell: dict,
    data_cache: _DataCache,
    progress: bool,
    folder: Path,
    mesh=None,
    rounds_per_dispatch: int = 1,
    on_rounds=None,
) -> dict:
    """Trains one cell (every seed at once on the simulator's run axis) and returns its results.

    Seed ``s`` uses ``jax.random.key(s)`` (base weights, LoRA init, shuffles), so a cell with more
    seeds extends, not changes, one with fewer (up to float32 order, see the module docstring).
    ``mesh``: a ``("clients",)`` mesh to shard each round's clients over (``--host-devices``), or
    None. ``rounds_per_dispatch``: 1 runs :func:`abo_jax.run`; more runs
    :func:`train_in_chunks`. ``on_rounds(rounds_done)`` is called whenever results reach the host
    (after every round, or every chunk).
    """
    limit_blas_threads(1)
    data, tx, ty, classes = data_cache.get(cell["dataset"])
    sim = make_cell_simulation(cell, data.x.shape[-1], classes, mesh)
    ranks = paper_ranks(cell["delta"], len(cell["hidden"]))
    seeds = cell["seeds"]
    record_mismatch = cell.get("mismatch", True)
    partial = folder / "partial" / f"{cell_id(cell)}.ckpt"
    partial.parent.mkdir(parents=True, exist_ok=True)
    keys = jnp.stack([jax.random.key(s) for s in range(seeds)])
    desc = f"  {cell['op']} delta={cell['delta']} E={cell['E']}"
    t0 = time.perf_counter()
    if rounds_per_dispatch > 1:
        history = train_in_chunks(
            sim,
            data,
            (tx, ty),
            rounds=cell["rounds"],
            key=keys,
            chunk=rounds_per_dispatch,
            checkpoint_path=partial,
            progress=progress,
            desc=desc,
            callback=on_rounds,
        )
    else:
        history, _ = run(
            sim,
            data,
            (tx, ty),
            rounds=cell["rounds"],
            key=keys,
            progress=progress,
            desc=desc,
            checkpoint_path=partial,
            checkpoint_every=CHECKPOINT_EVERY,
            callback=None if on_rounds is None else lambda r, state, record: on_rounds(r),
            fingerprint=cell,
        )
    wall = time.perf_counter() - t0
    if is_primary():  # the one process that writes (abo_jax.distributed)
        partial.unlink(missing_ok=True)
    acc = 100.0 * np.asarray(history["test_accuracy"], float).T  # (seeds, rounds), percent
    out = {
        "ranks": list(ranks),
        "best_acc": acc.max(axis=1),
        "final_acc": acc[:, -1],
        "best_round": acc.argmax(axis=1) + 1,
        "curves": {
            "test_acc": acc,
            "test_loss": np.asarray(history["test_loss"]).T,
            "train_loss": np.asarray(history["train_loss"]).T,
        },
        "seconds_per_round": wall / cell["rounds"],
        "wall_seconds": wall,
        "devices": 1 if mesh is None else int(mesh.devices.size),
        "processes": jax.process_count(),
        "rounds_per_dispatch": int(rounds_per_dispatch),
    }
    if record_mismatch:  # (seeds, rounds, layers) per term
        out["metrics"] = {
            term: np.moveaxis(np.asarray(history[name]), 0, 1)
            for term, name in MISMATCH_TERMS.items()
        }
    return out


def _lastk(acc, k: int) -> np.ndarray:
    acc = np.asarray(acc, float)
    return acc[:, -min(int(k), acc.shape[1]) :].mean(axis=1)


def _statistics(result: dict, last_k: int) -> dict[str, np.ndarray]:
    """Per-seed best, final and mean-of-last-k accuracy (percent) of one cell's result."""
    acc = np.asarray(result["curves"]["test_acc"], float)
    return {
        "best_acc": np.asarray(result["best_acc"], float),
        "final_acc": np.asarray(result["final_acc"], float),
        "lastk_acc": _lastk(acc, last_k),
    }


def summarize(
    records: list[dict], level: float = 0.95, *, protocol: str = "project", last_k: int = 30
) -> list[dict]:
    """One row per cell: mean and interval over seeds of best, final and mean-of-last-k accuracy.

    Every row names the protocol and the input normalization that produced it.
    """
    rows = []
    for rec in records:
        c, r = rec["cell"], rec["result"]
        stats = {k: mean_ci(v, level) for k, v in _statistics(r, last_k).items()}
        row = {
            "protocol": protocol,
            "dataset": c["dataset"],
            "normalization": c.get("normalization", "none"),
            "op": c["op"],
            "delta": c["delta"],
            "E": c["E"],
            "rounds": c["rounds"],
            "ranks": "-".join(map(str, r["ranks"])),
            "seeds": stats["best_acc"].n,
            "last_k": min(int(last_k), int(c["rounds"])),
        }
        for key, prefix in (("best_acc", "best"), ("final_acc", "final"), ("lastk_acc", "lastk")):
            iv = stats[key]
            row |= {f"{prefix}_mean": iv.mean, f"{prefix}_lo": iv.lo, f"{prefix}_hi": iv.hi}
        row["seconds_per_round"] = r["seconds_per_round"]
        rows.append(row)
    return rows


def _grid(records, dataset, op, key, deltas, epochs, last_k=30):
    g = np.full((len(epochs), len(deltas)), np.nan)
    for rec in records:
        c = rec["cell"]
        if c["dataset"] == dataset and c["op"] == op:
            value = _statistics(rec["result"], last_k)[key]
            g[epochs.index(c["E"]), deltas.index(c["delta"])] = np.mean(value)
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
        for key, label in (("best_acc", "best"), ("final_acc", "final"), ("lastk_acc", "lastk")):
            what = f"mean of last {cfg.last_k} rounds" if key == "lastk_acc" else label
            fig = heatmap_triptych(
                _grid(records, ds, sp, key, deltas, epochs, cfg.last_k),
                _grid(records, ds, ps, key, deltas, epochs, cfg.last_k),
                deltas,
                epochs,
                suptitle=f"{ds}: {what} test accuracy (%), mean of {cfg.seeds} seed(s); "
                f"{cfg.protocol} protocol, {normalization_for(cfg, ds)} inputs",
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
            with_terms = all("metrics" in v["result"] for v in cells.values())
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
            if not with_terms:
                continue
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
    """Claim verdict per data set on best (the paper's statistic), final and mean-of-last-k
    accuracy, each with the protocol that produced it."""
    out = {}
    for ds in cfg.datasets:
        out[ds] = {"protocol": cfg.protocol, "normalization": normalization_for(cfg, ds)}
        for key in STATISTICS:
            values = {
                (r["cell"]["op"], r["cell"]["delta"], r["cell"]["E"]): _statistics(
                    r["result"], cfg.last_k
                )[key]
                for r in records
                if r["cell"]["dataset"] == ds
            }
            out[ds][key] = claim_verdict(values, level=cfg.level)
    return out


#: Fields that change how fast a run goes, not its numbers (beyond float32 order): left out of
#: the results folder's hash, except host_devices (its own folder, as before).
_SPEED_FIELDS = ("rounds_per_dispatch", "compile_cache")


def run_name(cfg: PaperConfig) -> str:
    """``paper-<datasets>-<protocol>-<normalization>-<hash of the config>``.

    The protocol and the normalization are in the name (and the hash), so runs that differ in
    either never share a folder and a resumed run never mixes them.
    """
    if cfg.name:
        return cfg.name
    fields = dataclasses.asdict(cfg)
    for k in ("out", "name", "progress", "curve_cells", "level", *_SPEED_FIELDS):
        fields.pop(k)
    return (
        f"paper-{'-'.join(cfg.datasets)}-{cfg.protocol}-{cfg.normalization}-{config_hash(fields)}"
    )


def _use_devices(cfg: PaperConfig) -> int:
    """Asks JAX for ``cfg.host_devices`` CPU devices (0: one per core) and returns how many of them
    a mesh over the clients uses (a divisor of ``num_clients``)."""
    if jax.distributed.is_initialized():  # several processes: the mesh spans all their devices
        count = jax.device_count()
        if cfg.num_clients % count:
            raise ValueError(
                f"--num-clients {cfg.num_clients}: a run over {jax.process_count()} processes "
                f"shards the clients over all {count} devices; give a multiple of {count}"
            )
        return count
    want = cfg.host_devices or len(os.sched_getaffinity(0))
    want = max(d for d in range(1, want + 1) if cfg.num_clients % d == 0)
    try:
        use_host_devices(want)
    except RuntimeError:
        if cfg.host_devices:
            raise
        # one per core asked for after JAX started (e.g. in a test process): use what it has
    return min(want, mesh_devices(cfg.num_clients))


def _use_compile_cache(cfg: PaperConfig) -> None:
    if cfg.compile_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.out).resolve() / ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_paper(cfg: PaperConfig) -> dict:
    """Runs (or resumes) the grid, writes summary.csv, verdict.json and the plots.

    Returns:
      ``{"folder": Path, "rows": summary rows, "verdict": per data set, "counts": run/skipped,
      "plots": [paths]}``.
    """
    cfg.validate()
    devices = _use_devices(cfg)  # before any JAX computation in this process
    _use_compile_cache(cfg)
    mesh = host_mesh(devices)
    folder = results_dir(cfg.out, run_name(cfg))
    primary = is_primary()  # several processes: every one trains, process 0 writes
    if primary:
        atomic_write_json(folder / "config.json", dataclasses.asdict(cfg))
    cache = _DataCache(cfg)
    t0 = time.perf_counter()
    records, counts = run_grid(
        make_cells(cfg),
        lambda c: _run_cell(c, cache, cfg.progress, folder, mesh, cfg.rounds_per_dispatch),
        folder / "cells",
        desc="paper grid",
        show_progress=cfg.progress,
    )
    wall = time.perf_counter() - t0
    rows = summarize(records, cfg.level, protocol=cfg.protocol, last_k=cfg.last_k)
    verdict = verdicts(cfg, records)
    plots = []
    if primary:
        atomic_write_csv(folder / "summary.csv", rows)
        atomic_write_json(folder / "verdict.json", verdict)
        plots = make_plots(cfg, records, folder)
        atomic_write_json(
            folder / "run.json",
            {
                "protocol": cfg.protocol,
                "normalization": cfg.normalization,
                "devices": devices,
                "processes": jax.process_count(),
                "rounds_per_dispatch": cfg.rounds_per_dispatch,
                "wall_seconds_this_invocation": wall,
                **counts,
                "cells": len(records),
            },
        )
    return {
        "folder": folder,
        "rows": rows,
        "verdict": verdict,
        "counts": counts,
        "plots": plots,
        "wall_seconds": wall,
    }


PROTOCOL_TEXT = {
    "paper": "the paper's protocol (300/E + 1 rounds, round 0 trains; best accuracy over rounds)",
    "project": "the project's protocol (300/E rounds; best, final and mean-of-last-k accuracy)",
}


def print_report(cfg: PaperConfig, result: dict) -> None:
    level = f"{cfg.level:.0%} CI"
    log(f"protocol: {PROTOCOL_TEXT[cfg.protocol]}, {cfg.seeds} seed(s), one frozen base per seed")
    log(
        f"{'dataset':<14}{'op':<4}{'delta':>6}{'E':>4}{'rounds':>7}  best acc % [{level}]"
        f"        final acc % [{level}]     last-k mean % [{level}]"
    )
    for r in result["rows"]:
        log(
            f"{r['dataset']:<14}{r['op']:<4}{r['delta']:>6}{r['E']:>4}{r['rounds']:>7}  "
            f"{r['best_mean']:6.2f} [{r['best_lo']:6.2f},{r['best_hi']:6.2f}]   "
            f"{r['final_mean']:6.2f} [{r['final_lo']:6.2f},{r['final_hi']:6.2f}]   "
            f"{r['lastk_mean']:6.2f} [{r['lastk_lo']:6.2f},{r['lastk_hi']:6.2f}] (k={r['last_k']})"
        )
    for ds, v in result["verdict"].items():
        tag = f"{v['protocol']} protocol, {v['normalization']} inputs"
        log(format_verdict(v["best_acc"], f"{ds} (best accuracy, the paper's statistic; {tag})"))
        if cfg.protocol == "project":
            log(format_verdict(v["final_acc"], f"{ds} (final accuracy; {tag})"))
            log(format_verdict(v["lastk_acc"], f"{ds} (mean of last {cfg.last_k}; {tag})"))
    c = result["counts"]
    log(
        f"cells run now: {c['run']}, resumed from disk: {c['skipped']}; "
        f"wall {result['wall_seconds']:.0f} s"
    )
    log(f"results: {result['folder']}")


def _protocol_preset(argv) -> str:
    """The ``--protocol`` named on the command line (it picks the preset the other options
    override: ``--protocol paper`` also means one seed unless ``--seeds`` says otherwise)."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", default="project")
    known, _ = pre.parse_known_args(argv)
    return known.protocol if known.protocol in PROTOCOLS else "project"  # validate() reports it


def main(argv=None) -> dict:
    # One of several processes (python -m abo_jax.launch, or a cluster with
    # ABO_JAX_DISTRIBUTED=auto): join the run before JAX starts; a no-op otherwise.
    distributed_from_env()
    preset = functools.partial(get_config, _protocol_preset(argv))
    cfg = parse_config(preset, argv, __doc__.splitlines()[0], get_quick_config)
    try:
        cfg.validate()
    except ValueError as err:  # a usage error (exit 2) before any work
        import sys

        print(
            f"usage: python -m experiments.paper [options]\npython -m experiments.paper: error: {err}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    result = run_paper(cfg)
    if is_primary():
        print_report(cfg, result)
    return result
