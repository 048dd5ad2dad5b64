"""Benchmark 7: the paper grid's wall time, extrapolated from a sub-grid, before and after the levers.

``experiments.paper``'s full Fashion-MNIST grid (SP and PS x 7 rank ratios x 5 local-epoch values,
300/E rounds) is too long to time as a benchmark. This one trains a representative sub-grid (both
operators, the smallest and largest rank ratio, E = 1 and 2, a tenth of the rounds) under each
variant of the runner's options, one cell per subprocess (the JAX device count must be set before
JAX starts), the variants alternating cell by cell so that a burst of load hits them alike.

Per cell it records the time whenever results reach the host (after every round, or every chunk of
rounds). The steady time per round is the slope after the first dispatch; the cell's fixed cost is
the rest of its wall time (tracing, compiling, the first dispatch), of which compilation is read
from ``jax.monitoring``'s lowering and XLA compile events. The test evaluation is the cell's
``sim.evaluate`` timed alone on the full test set, and training is the steady round less it. The
process's set-up (the data set read, normalized and split) counts once. It extrapolates with
``round(delta, E) = a(delta) + E b(delta)`` (a round's own cost plus E local epochs, solved exactly
from the two E, linear in delta between the measured rank ratios); the fixed cost is interpolated
the same way. The figure to quote is the ratio between variants of one run.

Run: ``python -m experiments.bench.paper_grid [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.bench import common

__all__ = ["Config", "VARIANTS", "extrapolate", "get_config", "grid_rounds", "run", "worker"]

NAME = "paper_grid"
TITLE = "Paper grid wall time, extrapolated from a sub-grid"

#: Runner options per variant. "one dispatch per round" is the runner as it was before the levers:
#: one device, abo_jax.run's loop (a dispatch per round and per evaluation), the mismatch terms in
#: every cell. "default" is the default command with one seed, "default, 3 seeds" the default
#: command itself (``python -m experiments.paper``).
VARIANTS = {
    "one dispatch per round": {
        "host_devices": 1,
        "rounds_per_dispatch": 1,
        "mismatch": "all",
        "seeds": 1,
    },
    "default": {"seeds": 1},
    "default, 3 seeds": {"seeds": 3},
}
GRID_DELTAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07)
GRID_EPOCHS = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion_mnist"
    operators: tuple[str, ...] = ("sp", "ps")
    deltas: tuple[float, ...] = (0.01, 0.07)  # measured; the grid's others are interpolated
    epochs: tuple[int, int] = (1, 2)  # the model a + E b is solved from these two
    rounds_scale: float = 0.1  # 30 rounds at E = 1, 15 at E = 2: at least two dispatches of 10
    variants: tuple[str, ...] = tuple(VARIANTS)
    overrides: str = ""  # JSON of extra runner options for every variant (the quick form's sizes)
    eval_reps: int = 5
    timeout_s: float = 1200.0


def get_config(quick: bool = False) -> Config:
    if quick:  # digits at toy sizes: checks that it runs, no figures
        small = {"hidden": [16, 16], "max_per_client": 32, "max_test": 100, "batch_size": 16}
        return Config(
            dataset="digits",
            operators=("ps",),
            variants=("one dispatch per round", "default"),
            overrides=json.dumps(small),
            eval_reps=2,
            timeout_s=600.0,
        )
    return Config()


def worker(spec: dict) -> dict:
    """In the subprocess: runs one cell through ``experiments.paper``, records the split.

    ``spec``: ``{"config": PaperConfig fields, "eval_reps": timed evaluations}``.
    """
    import jax
    import jax.numpy as jnp

    # Lowering and XLA compilation (not tracing: its events nest, a jit inside a jit counts twice).
    events = (
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    compile_s = [0.0]

    def listen(event, duration, **_):
        if event in events:
            compile_s[0] += duration

    from experiments.devices import host_mesh
    from experiments.paper import run as paper
    from experiments.paper.config import PaperConfig

    fields = spec["config"]
    cfg = PaperConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    cfg.validate()
    devices = paper._use_devices(cfg)  # as run_paper does, before JAX starts
    paper._use_compile_cache(cfg)
    mesh = host_mesh(devices)
    (cell,) = paper.make_cells(cfg)
    t0 = time.perf_counter()
    cache = paper._DataCache(cfg)
    data, tx, ty, classes = cache.get(cell["dataset"])
    setup = time.perf_counter() - t0
    jax.monitoring.register_event_duration_secs_listener(listen)
    folder = Path(cfg.out)
    marks = []  # (rounds done, time) whenever results reach the host
    t_cell = time.perf_counter()
    res = paper._run_cell(
        cell,
        cache,
        False,
        folder,
        mesh,
        cfg.rounds_per_dispatch,
        on_rounds=lambda done: marks.append((done, time.perf_counter())),
    )
    compile_cell = compile_s[0]
    if len(marks) < 2:
        raise ValueError("a cell needs two host round trips to separate its fixed cost")
    (r0, t0), (r1, t1) = marks[0], marks[-1]
    per_round = (t1 - t0) / (r1 - r0)  # steady rounds: after the first dispatch (compiled)
    wall = t1 - t_cell

    # The evaluation alone, as the round loop runs it: the cell's simulator on the full test set.
    sim = paper.make_cell_simulation(cell, data.x.shape[-1], classes, mesh)
    keys = jnp.stack([jax.random.key(s) for s in range(cell["seeds"])])
    state = sim.shard(sim.init(keys, data), "state")
    tx, ty = sim.shard((tx, ty), "test")  # placed as train_in_chunks places it
    test_inputs = None if sim.prepare_test is None else sim.prepare_test(state, tx)
    evaluate = jax.jit(sim.evaluate)
    jax.block_until_ready(evaluate(state, tx, ty, test_inputs))
    times = []
    for _ in range(spec["eval_reps"]):
        t = time.perf_counter()
        jax.block_until_ready(evaluate(state, tx, ty, test_inputs))
        times.append(time.perf_counter() - t)
    eval_round = float(np.median(times))
    out = {
        "op": cell["op"],
        "delta": cell["delta"],
        "E": cell["E"],
        "rounds": cell["rounds"],
        "seeds": cell["seeds"],
        "devices": res["devices"],
        "rounds_per_dispatch": res["rounds_per_dispatch"],
        "cell_wall_s": wall,
        "setup_s": setup,
        "fixed_s": max(
            0.0, wall - per_round * cell["rounds"]
        ),  # tracing, compiling, first dispatch
        "compile_s": compile_cell,
        "eval_s_per_round": eval_round,
        "train_s_per_round": max(0.0, per_round - eval_round),
    }
    return out


def _spec(config: Config, variant: str, op: str, delta: float, e: int, out: Path) -> dict:
    fields = {
        "datasets": [config.dataset],
        "operators": [op],
        "deltas": [delta],
        "epochs": [e],
        "rounds_scale": config.rounds_scale,
        "out": str(out),
        "progress": False,
        **json.loads(config.overrides or "{}"),
        **VARIANTS[variant],
    }
    return {"config": fields, "eval_reps": config.eval_reps}


def _run_worker(spec: dict, timeout_s: float) -> dict:
    code = "import json, sys; from experiments.bench.paper_grid import worker; "
    code += "print(json.dumps(worker(json.loads(sys.argv[1]))))"
    return common.run_python(
        code, json.dumps(spec), env={"OPENBLAS_NUM_THREADS": "1"}, timeout_s=timeout_s
    )


def grid_rounds(epochs: int, base_rounds: int = 300) -> int:
    """Rounds of a full-grid cell under the project protocol: ``300 / E``."""
    return max(1, round(base_rounds / epochs))


def extrapolate(cells: list[dict], deltas=GRID_DELTAS, epochs=GRID_EPOCHS) -> dict:
    """Full-grid seconds (fixed per-cell cost, of it compilation; training; evaluation) from
    measured cells of one variant.

    ``cells``: the worker records of one variant, for each operator at two values of E (``e0 <
    e1``) and at least two rank ratios. Per operator and measured delta the training time per round
    is ``a + E b`` with ``a, b`` solved from the two E; ``a``, ``b``, the evaluation time per round
    and the fixed cost (linear in E through the two) are interpolated linearly in delta.
    """
    total = {"fixed": 0.0, "compile": 0.0, "train": 0.0, "evaluate": 0.0}
    for op in sorted({c["op"] for c in cells}):
        by = {(c["delta"], c["E"]): c for c in cells if c["op"] == op}
        e0, e1 = sorted({e for _, e in by})
        ds = sorted({d for d, _ in by})

        def measured(key, e, by=by, ds=ds):
            return np.array([by[d, e][key] for d in ds])

        t0, t1 = measured("train_s_per_round", e0), measured("train_s_per_round", e1)
        b = (t1 - t0) / (e1 - e0)
        a = t0 - e0 * b
        ev = (measured("eval_s_per_round", e0) + measured("eval_s_per_round", e1)) / 2
        for d in deltas:
            ai, bi, evi = (float(np.interp(d, ds, v)) for v in (a, b, ev))
            for e in epochs:
                r, w = grid_rounds(e), (e - e0) / (e1 - e0)
                for key, name in (("fixed_s", "fixed"), ("compile_s", "compile")):
                    per_e = (1 - w) * measured(key, e0) + w * measured(key, e1)
                    total[name] += max(0.0, float(np.interp(d, ds, per_e)))
                total["train"] += r * max(0.0, ai + e * bi)
                total["evaluate"] += r * evi
    total["setup"] = float(np.median([c["setup_s"] for c in cells]))
    total["total"] = total["fixed"] + total["train"] + total["evaluate"] + total["setup"]
    return total


def run(config: Config, reps=None) -> dict:
    del reps  # one measurement per cell; the variants alternate cell by cell
    cells: dict[str, list[dict]] = {v: [] for v in config.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for op in config.operators:
            for delta in config.deltas:
                for e in config.epochs:
                    for i, variant in enumerate(config.variants):
                        out = Path(tmp) / f"{op}-{delta}-{e}-{i}"  # fresh: no compile cache hits
                        spec = _spec(config, variant, op, delta, e, out)
                        rec = _run_worker(spec, config.timeout_s)
                        cells[variant].append(rec)
                        print(f"  {variant}: {op} delta={delta} E={e}: {rec}", flush=True)
    rows, base = [], None
    for variant in config.variants:
        grid = extrapolate(cells[variant])
        base = grid["total"] if base is None else base
        first = cells[variant][0]
        rows.append(
            {
                "variant": variant,
                "seeds": first["seeds"],
                "devices": first["devices"],
                "per_dispatch": first["rounds_per_dispatch"],
                "fixed_min": grid["fixed"] / 60,
                "compile_min": grid["compile"] / 60,
                "train_min": grid["train"] / 60,
                "evaluate_min": grid["evaluate"] / 60,
                "setup_min": grid["setup"] / 60,
                "grid_min": grid["total"] / 60,
                "speedup": base / grid["total"],
            }
        )
    return {"rows": rows, "cells": cells, "targets": {"grid_min, 1 seed": 60.0}}


COLUMNS = [
    ("variant", "variant", None),
    ("seeds", "seeds", None),
    ("devices", "devices", None),
    ("per_dispatch", "rounds/dispatch", None),
    ("fixed_min", "fixed min", ".1f"),
    ("compile_min", "of it compile", ".1f"),
    ("train_min", "train min", ".1f"),
    ("evaluate_min", "evaluate min", ".1f"),
    ("grid_min", "grid min", ".1f"),
    ("speedup", "x first", ".2f"),
]


def notes(config: Config, result: dict) -> list[str]:
    return [
        f"sub-grid: {config.dataset}, {','.join(config.operators)} x delta {config.deltas} x E "
        f"{config.epochs}, rounds x {config.rounds_scale}; extrapolated to 2 x 7 x 5 cells, 300/E "
        "rounds (the project protocol)",
        "compile: lowering + XLA compile events during the cell; evaluate: the "
        "cell's sim.evaluate timed alone x rounds; train: the steady time per round (after the "
        "first dispatch) less evaluation; fixed: the rest of the cell's wall time (tracing, "
        "compiling, first dispatch)",
    ]


def main(argv=None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
