"""Benchmark 5: peak memory of a round as the number of clients grows (10 to 10,000).

XLA plans every buffer of a jitted round when it compiles, so the compiled executable's
``memory_analysis()`` gives the round's arguments, outputs and peak temporaries without running it
(and without allocating the inputs: they are abstract shapes). A round must grow with the LoRA
factors, the optimizer state and the client data, not with ``m x base weights``: the table reports
the bytes each extra client costs (slope between the two largest m) next to those sizes. The
contrast, ``merged``, is the same round whose forward pass goes through ``W0 + B A`` (what merging
LoRA into the weights does once vmapped: one ``(d, k)`` matrix per client). ``donate_state`` is
the simulator's round with ``make_simulation(..., donate_state=True)``: the state's buffers are
donated, so XLA may write the next state over them (counted as aliased bytes); with
``client_chunk`` it also trains the clients in groups (``make_simulation(client_chunk=...)``), so
only one group's activations are live at a time.

Run: ``python -m experiments.bench.memory [--quick] [--out DIR]``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from functools import partial

import jax
import numpy as np

from abo_jax.data.client_data import ClientData
from experiments.bench import common
from experiments.bench import rounds as R
from experiments.bench import workload as W

NAME = "memory"
TITLE = "Round memory vs number of clients"


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000, 10000)
    models: tuple[tuple[str, W.RoundSpec], ...] = (
        (
            "digits 64-200-200-10",
            W.SMALL_CLIENTS,
        ),
        (
            "paper 784-200-200-10",
            dataclasses.replace(W.SMALL_CLIENTS, sizes=(784, 200, 200, 10)),
        ),
    )
    merged_contrast: bool = True
    client_chunk: int | None = 100  # also the donating round in client groups of this many
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        return Config(
            clients=(2, 4),
            models=(("tiny 64-16-10", W.TINY),),
            merged_contrast=False,
            client_chunk=1,
        )
    return Config()


def sizes_per_client(spec: W.RoundSpec) -> dict[str, int]:
    """Bytes of what one client owns, and of the shared base, for ``spec``."""
    item = np.dtype(spec.dtype).itemsize
    lora = sum(r * (d + k) for (d, k), r in zip(spec.layer_shapes, spec.ranks, strict=True))
    bias = sum(d for d, _ in spec.layer_shapes)
    # x float, y int32, mask bool, and the simulator's cached first-layer x @ W0_1.T
    data = spec.samples * (spec.sizes[0] * item + 4 + 1 + spec.sizes[1] * item)
    return {
        "trainable": (lora + bias) * item,  # LoRA factors + biases
        "trainable_with_momentum": 2 * (lora + bias) * item,
        "data": data,
        "base_weights": sum(d * k for d, k in spec.layer_shapes) * item,
    }


def abstract_sim_args(
    spec: W.RoundSpec, seed: int, donate_state: bool = False, client_chunk: int | None = None
):
    """``(round, (state, data, inputs))`` of abo_jax's simulator for ``spec``, all abstract.

    The state is initialized for 3 clients and its per-client leaves are re-shaped to ``m``, so
    nothing of size ``m`` is ever allocated.
    """
    model, _, sim = R.sim_parts(spec, donate_state=donate_state, client_chunk=client_chunk)
    m, m0 = spec.clients, 3
    small = W.make_problem(dataclasses.replace(spec, clients=m0), seed)
    state = sim.init(jax.random.key(seed), R.client_data(small))
    shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    grow = lambda x: jax.ShapeDtypeStruct((m, *x.shape[1:]), x.dtype)
    state = jax.tree.map(shape, state)._replace(
        clients=jax.tree.map(grow, state.clients),
        opt_state=jax.tree.map(grow, state.opt_state),
        weights=grow(state.weights),
        lora_scale=grow(state.lora_scale),
    )
    n = spec.samples
    data = ClientData(
        x=jax.ShapeDtypeStruct((m, n, spec.sizes[0]), np.dtype(spec.dtype)),
        y=jax.ShapeDtypeStruct((m, n), np.int32),
        mask=jax.ShapeDtypeStruct((m, n), np.bool_),
        sizes=jax.ShapeDtypeStruct((m,), np.int32),
    )
    inputs = jax.eval_shape(jax.vmap(model.prepare, in_axes=(None, 0)), state.frozen, data.x)
    return sim.round, (state, data, inputs)


def analyse(round_fn, args) -> dict:
    """Compiles the jitted ``round_fn`` for the abstract ``args`` and reads its memory plan."""
    t0 = time.perf_counter()
    compiled = round_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    fields = {
        "argument_bytes": ma.argument_size_in_bytes,
        "output_bytes": ma.output_size_in_bytes,
        "temp_bytes": ma.temp_size_in_bytes,
        "alias_bytes": ma.alias_size_in_bytes,
        "code_bytes": ma.generated_code_size_in_bytes,
    }
    fields["peak_bytes"] = (
        fields["argument_bytes"] + fields["output_bytes"] + fields["temp_bytes"]
    ) - fields["alias_bytes"]
    fields["compile_s"] = compile_s
    return fields


def run(config: Config, reps: int | None = None) -> dict:
    """Compiles the round for every model and m and reads its memory plan (``reps``: unused,
    nothing is timed)."""
    rows = []
    summary = []
    impl = None
    for model_name, base_spec in config.models:
        variants = [("abo-jax round", False, False, None)]
        if R.sim_available():
            variants.append(("abo-jax round, donate_state", False, True, None))
            if config.client_chunk:
                name = f"abo-jax round, donate_state, client_chunk={config.client_chunk}"
                variants.append((name, False, True, config.client_chunk))
        if config.merged_contrast:  # the bench's round, merged
            variants.append(("merged W0+BA (contrast)", True, False, None))
        for variant, merged, donate, chunk in variants:
            per_m = []
            for m in config.clients:
                spec = dataclasses.replace(base_spec, clients=m)
                print(f"  memory: {model_name}, {variant}, m={m} ...", file=sys.stderr, flush=True)
                if merged or not R.sim_available():
                    fn = jax.jit(partial(W.vmapped_round, spec, merged=merged))
                    args = (jax.eval_shape(partial(W.make_problem, spec, config.seed)),)
                    impl = impl if merged else "bench"
                else:
                    fn, args = abstract_sim_args(spec, config.seed, donate, chunk)
                    impl = "sim"
                fields = analyse(fn, args)
                row = {"model": model_name, "variant": variant, "m": m, **fields}
                rows.append(row)
                per_m.append(row)
            per = sizes_per_client(base_spec)
            lo, hi = per_m[-2], per_m[-1]
            slope = (hi["peak_bytes"] - lo["peak_bytes"]) / (hi["m"] - lo["m"])
            temp_slope = (hi["temp_bytes"] - lo["temp_bytes"]) / (hi["m"] - lo["m"])
            summary.append(
                {
                    "model": model_name,
                    "variant": variant,
                    "bytes_per_client": slope,
                    "temp_bytes_per_client": temp_slope,
                    **{f"{k}_bytes": v for k, v in per.items()},
                    "per_client_over_base": slope / per["base_weights"],
                    "per_client_over_data_plus_trainable": slope
                    / (per["data"] + per["trainable_with_momentum"]),
                }
            )
    ok = [s for s in summary if s["variant"].startswith("abo-jax round")]
    targets = {
        "grows_with_factors_and_data_not_base": all(s["per_client_over_base"] < 1 for s in ok)
    }
    return {"rows": rows, "summary": summary, "targets": targets, "round_impl": impl}


ROW_COLUMNS = [
    ("model", "model", None),
    ("variant", "variant", None),
    ("m", "m", None),
    ("argument_bytes", "args [B]", ".3e"),
    ("temp_bytes", "temp [B]", ".3e"),
    ("peak_bytes", "peak [B]", ".3e"),
]
SUMMARY_COLUMNS = [
    ("model", "model", None),
    ("variant", "variant", None),
    ("bytes_per_client", "B/client", ".4g"),
    ("data_bytes", "data B/client", None),
    ("trainable_with_momentum_bytes", "LoRA+bias+mom B/client", None),
    ("base_weights_bytes", "base weights B", None),
    ("per_client_over_base", "(B/client)/base", ".3f"),
]


def table(result: dict) -> str:
    return (
        common.format_table(result["rows"], ROW_COLUMNS)
        + "\n\n"
        + common.format_table(result["summary"], SUMMARY_COLUMNS)
    )


def notes(config: Config, result: dict, env: dict) -> list[str]:
    return [
        "peak = arguments + outputs + temporaries - aliased, from the compiled executable's"
        " memory_analysis() (XLA's buffer assignment; nothing is allocated).",
        "B/client: slope of peak between the two largest m.",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main(sys.argv[1:])
