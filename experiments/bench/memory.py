"""Benchmark 5: peak memory of a round as the number of clients grows (10 to 10,000).

XLA plans every buffer of a jitted round when it compiles, so the executable's
``memory_analysis()`` gives the round's arguments, outputs and temporaries without running it; the
inputs are abstract shapes (``jax.eval_shape`` of the round's ``init_state`` and ``prepare``), so
nothing of size ``m`` is allocated. A round must grow with the LoRA factors, the optimizer state and
the client data, not with ``m x base weights``: the table reports the bytes each extra client costs
(slope between the two largest m) next to those sizes. Variants, all through the round's arguments:
``jit_round(donate=True)`` (XLA may write the next state over the old one: aliased bytes), client
groups (``client_groups``: one group's activations live at a time), and, as the contrast, a model
whose forward goes through ``W0 + B A`` (:func:`merged_model`: one ``(d, k)`` matrix per client).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import abo_jax
from experiments.bench import common
from experiments.bench import workload as W

NAME = "memory"
TITLE = "Round memory vs number of clients"


@dataclass(frozen=True)
class Config:
    clients: tuple[int, ...] = (10, 100, 1000, 10000)
    models: tuple[tuple[str, W.RoundSpec], ...] = (
        ("digits 64-200-200-10", W.SMALL_CLIENTS),
        ("paper 784-200-200-10", dataclasses.replace(W.SMALL_CLIENTS, sizes=(784, 200, 200, 10))),
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


def merged_model(spec: W.RoundSpec) -> abo_jax.Model:
    """``workload.model_of(spec)`` with the forward through the merged ``W0 + B A`` (the contrast:
    what merging LoRA into the weights costs once vmapped over clients)."""
    base = W.model_of(spec)

    def apply(frozen, trainable, x, scale):
        h = x
        for i, (name, w0) in enumerate(frozen.items()):
            f = trainable.lora[name]
            h = h @ (w0 + scale * (f.b @ f.a)).T + trainable.extra[name][None]
            h = jax.nn.relu(h) if i < len(frozen) - 1 else h
        return h

    prepare = lambda frozen, x: jnp.reshape(x, (x.shape[0], -1))  # noqa: E731
    return base._replace(apply=apply, prepare=prepare, caches=False)


def sizes_per_client(spec: W.RoundSpec) -> dict[str, int]:
    """Bytes of what one client owns, and of the shared base."""
    item = np.dtype(spec.dtype).itemsize
    lora = sum(r * (d + k) for (d, k), r in zip(spec.layer_shapes, spec.ranks, strict=True))
    bias = sum(d for d, _ in spec.layer_shapes)
    # x float, y int32, mask bool, and the round's cached first-layer x @ W0_1.T
    data = spec.samples * (spec.sizes[0] * item + 4 + 1 + spec.sizes[1] * item)
    return {
        "data": data,
        "trainable_with_momentum": 2 * (lora + bias) * item,
        "base_weights": sum(d * k for d, k in spec.layer_shapes) * item,
    }


def planned_memory(spec: W.RoundSpec, *, model=None, donate=False, client_chunk=None) -> dict:
    """XLA's buffer plan of one round of ``spec`` for abstract inputs of ``spec.clients`` clients."""
    model = W.model_of(spec) if model is None else model
    groups = (
        abo_jax.client_groups(client_chunk) if client_chunk else abo_jax.simulation.vmap_clients
    )
    rnd = abo_jax.federated_round(
        model,
        abo_jax.product_sum(),
        optimizer=W.optimizer_of(spec),
        local_epochs=spec.epochs,
        batch_size=spec.batch,
        map_clients=groups,
    )
    m, n, dtype = spec.clients, spec.samples, np.dtype(spec.dtype)
    sds = jax.ShapeDtypeStruct
    data = abo_jax.ClientData(
        x=sds((m, n, spec.sizes[0]), dtype),
        y=sds((m, n), np.int32),
        mask=sds((m, n), np.bool_),
        sizes=sds((m,), np.int32),
    )
    state = jax.eval_shape(
        rnd.init_state, jax.random.key(0), data, sds((m,), dtype), {}, sds((m,), dtype)
    )
    inputs = jax.eval_shape(rnd.prepare, state, data)
    apply = abo_jax.jit_round(rnd, donate=donate).apply
    t0 = time.perf_counter()
    ma = apply.lower(state, data, inputs).compile().memory_analysis()
    fields = {
        "argument_bytes": ma.argument_size_in_bytes,
        "output_bytes": ma.output_size_in_bytes,
        "temp_bytes": ma.temp_size_in_bytes,
        "alias_bytes": ma.alias_size_in_bytes,
        "compile_s": time.perf_counter() - t0,
    }
    fields["peak_bytes"] = (
        fields["argument_bytes"] + fields["output_bytes"] + fields["temp_bytes"]
    ) - fields["alias_bytes"]
    return fields


def run(config: Config, reps: int | None = None) -> dict:
    """Compiles the round for every model, variant and m (``reps`` unused: nothing is timed)."""
    del reps
    rows, summary = [], []
    for model_name, base_spec in config.models:
        variants = {"abo-jax round": {}, "abo-jax round, donate_state": {"donate": True}}
        if config.client_chunk:
            name = f"abo-jax round, donate_state, client_chunk={config.client_chunk}"
            variants[name] = {"donate": True, "client_chunk": config.client_chunk}
        if config.merged_contrast:
            variants["merged W0+BA (contrast)"] = {"model": merged_model(base_spec)}
        for variant, kwargs in variants.items():
            per_m = []
            for m in config.clients:
                print(f"  memory: {model_name}, {variant}, m={m}", file=sys.stderr, flush=True)
                fields = planned_memory(dataclasses.replace(base_spec, clients=m), **kwargs)
                per_m.append({"model": model_name, "variant": variant, "m": m, **fields})
            rows += per_m
            per = sizes_per_client(base_spec)
            lo, hi = per_m[-2], per_m[-1]
            slope = (hi["peak_bytes"] - lo["peak_bytes"]) / (hi["m"] - lo["m"])
            summary.append(
                {
                    "model": model_name,
                    "variant": variant,
                    "bytes_per_client": slope,
                    **{f"{k}_bytes": v for k, v in per.items()},
                    "per_client_over_base": slope / per["base_weights"],
                }
            )
    ok = [s["per_client_over_base"] < 1 for s in summary if s["variant"].startswith("abo-jax")]
    return {"rows": rows, "summary": summary, "targets": {"grows_with_factors_not_base": all(ok)}}


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
    rows = common.format_table(result["rows"], ROW_COLUMNS)
    return rows + "\n\n" + common.format_table(result["summary"], SUMMARY_COLUMNS)


def notes(config: Config, result: dict) -> list[str]:
    return [
        "peak = arguments + outputs + temporaries - aliased (memory_analysis(): XLA's buffer plan);"
        " B/client: slope of the peak between the two largest m."
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    main()
