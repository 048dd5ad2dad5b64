"""Benchmark 3: the vmapped, jitted round against a PyTorch round written the usual way.

PyTorch federated LoRA code loops over clients, builds a ``torch.optim.SGD`` per client and trains
eagerly (:func:`torch_round`). Same MLP (digits-sized, 64-200-200-10), frozen base and LoRA init
(copied from the round's state), loss, optimizer, batch and PS aggregation; both rounds are first
checked to agree without shuffling (the round with ``client_update=partial(client_update,
batches_fn=in_order_batches)``, torch in order) before they are timed with shuffling.

torch is optional (``pip install 'abo-jax[bench]'``); without it this writes ``"skipped"``.
Target (issue 7): abo-jax faster at every m, by at least 5x at ``m >= 100``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from dataclasses import dataclass

import numpy as np

import abo_jax
from experiments.bench import common
from experiments.bench import workload as W

NAME = "vs_torch"
TITLE = "abo-jax vs PyTorch round"


class TorchMissingError(RuntimeError):
    """torch is not installed (only this comparison needs it)."""


def import_torch():
    try:
        return importlib.import_module("torch")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TorchMissingError(
            "the PyTorch comparison needs torch (optional): pip install 'abo-jax[bench]'"
        ) from e


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000)
    spec: W.RoundSpec = W.SMALL_CLIENTS  # m set per row
    reps: int = 5
    check_clients: int = 10  # m of the equality check (no shuffling)
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    return Config(clients=(4,), spec=W.TINY, reps=2, check_clients=3) if quick else Config()


def torch_round(spec: W.RoundSpec, s: W.Setup, *, shuffle: bool = True, seed: int = 0):
    """``(round_fn, start)``: the PyTorch round on ``s``'s data from ``s``'s initial global model;
    ``round_fn(state) -> state``, a dict of the trainable tensors (``<layer>.a``, ``.b``, ``.bias``)."""
    torch = import_torch()
    frozen = {k: torch.as_tensor(np.array(v)) for k, v in s.state.frozen.items()}
    start = jax_to_torch(jax_global(s, s.state), torch)
    names = list(frozen)
    xs = [torch.as_tensor(np.array(x)) for x in s.data.x]
    ys = [torch.as_tensor(np.array(y)).long() for y in s.data.y]
    weights = [float(w) for w in np.asarray(s.state.weights)]
    generator = torch.Generator().manual_seed(seed)

    def forward(params, x):
        for i, name in enumerate(names):
            a, b, bias = params[f"{name}.a"], params[f"{name}.b"], params[f"{name}.bias"]
            x = x @ frozen[name].T + (x @ a.T) @ b.T + bias
            x = torch.relu(x) if i < len(names) - 1 else x
        return x

    def round_fn(state):
        uploads = []
        for x, y in zip(xs, ys, strict=True):
            params = {k: v.clone().requires_grad_(True) for k, v in state.items()}
            opt = torch.optim.SGD(
                params.values(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
            )
            for _ in range(spec.epochs):
                n = x.shape[0]
                perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
                for j in range(n // spec.batch):
                    idx = perm[j * spec.batch : (j + 1) * spec.batch]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(forward(params, x[idx]), y[idx]).backward()
                    opt.step()
            uploads.append({k: v.detach() for k, v in params.items()})
        # Server: PS (B and A averaged separately) and the biases, weights p_i.
        return {k: sum(w * u[k] for w, u in zip(weights, uploads, strict=True)) for k in state}

    return round_fn, start


def jax_global(s: W.Setup, state) -> dict:
    g = s.global_model(state)
    out = {}
    for name, f in g.lora.items():
        out.update({f"{name}.a": f.a, f"{name}.b": f.b, f"{name}.bias": g.extra[name]})
    return out


def jax_to_torch(params: dict, torch) -> dict:
    return {k: torch.as_tensor(np.array(v)) for k, v in params.items()}


def equality_check(spec: W.RoundSpec, seed: int) -> float:
    """``max |jax - torch|`` of the global model after one round, both without shuffling."""
    in_order = functools.partial(abo_jax.client_update, batches_fn=W.in_order_batches)
    s = W.setup(spec, seed=seed, client_update=in_order)
    round_fn, start = torch_round(spec, s, shuffle=False)
    ours = jax_global(s, s.compiled()[0]()[0])
    theirs = round_fn(start)
    return max(float(np.max(np.abs(np.asarray(ours[k]) - theirs[k].numpy()))) for k in ours)


def run(config: Config, reps: int | None = None) -> dict:
    torch = import_torch()  # raises TorchMissingError with the install hint
    threads = torch.get_num_threads()
    check = equality_check(dataclasses.replace(config.spec, clients=config.check_clients), 0)
    rows = []
    for m in config.clients:
        spec = dataclasses.replace(config.spec, clients=m)
        s = W.setup(spec, seed=config.seed)
        ours, _, compile_s = s.compiled()
        round_fn, start = torch_round(spec, s, seed=config.seed)

        def torch_thunk(n, f=round_fn, state=start):
            torch.set_num_threads(n)
            try:
                return f(state)
            finally:
                torch.set_num_threads(threads)

        thunks = {
            "abo_jax": ours,
            "torch": lambda: torch_thunk(threads),
            "torch_1thread": lambda: torch_thunk(1),
        }
        print(f"  vs_torch: m={m} ...", file=sys.stderr, flush=True)
        t = common.time_interleaved(thunks, reps=reps or config.reps)
        rows.append(
            {
                "m": m,
                "abo_jax_s": t["abo_jax"].median_s,
                "torch_s": t["torch"].median_s,
                "torch_1thread_s": t["torch_1thread"].median_s,
                "speedup": min(t["torch"].median_s, t["torch_1thread"].median_s)
                / t["abo_jax"].median_s,
                "compile_s": compile_s,
                "times_s": {k: v.times_s for k, v in t.items()},
            }
        )
    big = [r["speedup"] >= 5 for r in rows if r["m"] >= 100]
    targets = {
        "faster_at_every_m": all(r["speedup"] > 1 for r in rows),
        "ge_5x_at_m_ge_100": all(big) if big else None,
    }
    return {
        "rows": rows,
        "targets": targets,
        "torch_version": torch.__version__,
        "torch_threads": threads,
        "equality_check_max_abs": check,
    }


COLUMNS = [
    ("m", "m", None),
    ("abo_jax_s", "abo-jax [s]", ".3g"),
    ("torch_s", "PyTorch [s]", ".3g"),
    ("torch_1thread_s", "PyTorch 1 thread [s]", ".3g"),
    ("speedup", "speedup vs faster torch", ".1f"),
]


def notes(config: Config, result: dict) -> list[str]:
    return [
        f"PyTorch {result['torch_version']} eager, {result['torch_threads']} threads (and 1); same"
        f" round without shuffling: max |jax - torch| = {result['equality_check_max_abs']:.2e}"
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__], skip_on=(TorchMissingError,))


if __name__ == "__main__":
    main()
