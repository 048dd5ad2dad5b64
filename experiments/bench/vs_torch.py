"""Benchmark 3: the vmapped, jitted round vs a PyTorch round written the usual way.

PyTorch federated LoRA code usually loops over clients, builds a ``torch.optim.SGD`` per client and
trains eagerly (:mod:`experiments.bench.torch_baseline`). Same MLP (digits-sized, 64-200-200-10),
shapes, LoRA init, loss, optimizer, batch and PS aggregation as the vmapped round; both rounds are
first checked to give the same result (no shuffling, same init) before they are timed.

torch is optional (``pip install 'abo-jax[bench]'``); without it this benchmark says so and writes
a JSON with ``"skipped"``.
Run: ``python -m experiments.bench.vs_torch [--quick] [--out DIR]``.
Target (issue 7): abo-jax faster at every m, by at least 5x at ``m >= 100``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import numpy as np

from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W

NAME = "vs_torch"
TITLE = "abo-jax vs PyTorch round"


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000)
    spec: W.RoundSpec = W.SMALL_CLIENTS  # m set per row
    reps: int = 5
    check_clients: int = 10  # m of the equality check (no shuffling)
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        spec = W.TINY
        return Config(clients=(4,), spec=spec, reps=2, check_clients=3)
    return Config()


def equality_check(spec: W.RoundSpec, seed: int) -> float:
    """Max abs difference between the JAX and torch rounds on one problem, without shuffling."""
    from experiments.bench import torch_baseline as T

    problem = W.make_problem(spec, seed)
    jax_out, _ = W.jit_vmapped_round(spec, shuffle=False)(problem)
    round_fn, state = T.make_round(spec, problem, shuffle=False)
    torch_out = T.to_numpy_tree(round_fn(state), len(spec.ranks))
    jax_np = {
        "lora": tuple((np.asarray(f.b), np.asarray(f.a)) for f in jax_out["lora"]),
        "bias": tuple(np.asarray(b) for b in jax_out["bias"]),
    }
    import jax

    return max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(jax_np), jax.tree.leaves(torch_out), strict=True)
    )


def run(config: Config, reps: int | None = None) -> dict:
    from experiments.bench import torch_baseline as T

    torch = T.import_torch()  # raises TorchMissingError with the install hint
    reps = config.reps if reps is None else reps
    default_threads = torch.get_num_threads()
    check = equality_check(
        dataclasses.replace(config.spec, clients=config.check_clients), config.seed
    )
    rows = []
    impl = None
    for m in config.clients:
        spec = dataclasses.replace(config.spec, clients=m)
        problem = W.make_problem(spec, config.seed)
        h = R.make_harness(spec, problem, seed=config.seed)
        impl = h.impl
        vmapped, _, vm_c = common.compiled_thunk(h.vmapped, *h.vmapped_args)
        torch_round, torch_state = T.make_round(spec, problem, seed=config.seed)

        def torch_thunk(threads, f=torch_round, s=torch_state):
            torch.set_num_threads(threads)
            try:
                return f(s)
            finally:
                torch.set_num_threads(default_threads)

        thunks = {
            "abo_jax": vmapped,
            "torch": lambda: torch_thunk(default_threads),
            "torch_1thread": lambda: torch_thunk(1),
        }
        print(f"  vs_torch: m={m} ...", file=sys.stderr, flush=True)
        t = common.time_interleaved(thunks, reps=reps, warmup=1)
        t_torch = min(t["torch"].median_s, t["torch_1thread"].median_s)
        rows.append(
            {
                "m": m,
                "abo_jax_s": t["abo_jax"].median_s,
                "torch_s": t["torch"].median_s,
                "torch_1thread_s": t["torch_1thread"].median_s,
                "speedup": t_torch / t["abo_jax"].median_s,
                "compile_s": {"abo_jax": vm_c},
                "times_s": common.times_of(t),
            }
        )
    targets = {
        "faster_at_every_m": all(r["speedup"] > 1 for r in rows),
        "ge_5x_at_m_ge_100": (
            all(r["speedup"] >= 5 for r in big)
            if (big := [r for r in rows if r["m"] >= 100])
            else None
        ),
    }
    return {
        "rows": rows,
        "targets": targets,
        "round_impl": impl,
        "torch_version": torch.__version__,
        "torch_threads": default_threads,
        "equality_check_max_abs": check,
    }


COLUMNS = [
    ("m", "m", None),
    ("abo_jax_s", "abo-jax [s]", ".3g"),
    ("torch_s", "PyTorch [s]", ".3g"),
    ("torch_1thread_s", "PyTorch 1 thread [s]", ".3g"),
    ("speedup", "speedup vs faster torch", ".1f"),
]


def notes(config: Config, result: dict, env: dict) -> list[str]:
    return [
        f"PyTorch {result['torch_version']} eager, {result['torch_threads']} threads (and 1); loop over"
        " clients, fresh torch.optim.SGD per client, PS + bias averaging on the server.",
        "same result checked first (no shuffling): max |jax - torch| ="
        f" {result['equality_check_max_abs']:.2e}",
    ]


def main(argv: list[str] | None = None) -> dict:
    from experiments.bench import torch_baseline as T

    return common.bench_main(argv, sys.modules[__name__], skip_on=(T.TorchMissingError,))


if __name__ == "__main__":
    main(sys.argv[1:])
