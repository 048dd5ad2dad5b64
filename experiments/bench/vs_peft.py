"""Benchmark 9: federated LoRA fine-tuning of MiniLM, abo-jax's round against PyTorch + peft.

The field's round (FedIT-style code on peft): one ``peft`` LoRA model; for each client in turn, load
the global adapter and head (``set_peft_model_state_dict``), build a fresh optimizer, train its
local steps eagerly, keep ``get_peft_model_state_dict``; the server then averages every adapter
tensor and the head (Product-Sum, FedIT). abo-jax's round: :func:`abo_jax.bert_lora_model` with
:func:`abo_jax.product_sum`, every client trained at once under ``jax.vmap``, one jitted round.
Same weights (all-MiniLM-L6-v2, or a random small BERT for ``--quick``), token ids, LoRA init
(copied from abo-jax's state), scale 1, loss, SGD, batch, steps, aggregation and weights; no
dropout. Both rounds are first checked to give the same global model without shuffling.

Two settings of the same round:

- ``all layers``: LoRA on query/value of every layer. Nothing can be cached: abo-jax runs the
  whole encoder every step, as peft does.
- ``last layers``: LoRA on query/value of the last ``--lora-layers`` layers, peft with
  ``layers_to_transform``. abo-jax's ``prepare`` computes the frozen layers below once per run
  (:attr:`abo_jax.Model.caches`), timed apart as its one-off cost; ``abo-jax uncached``
  (``precompute=False``) recomputes them every round, as peft recomputes them every step. peft has
  no such cache.

Memory per client is XLA's buffer plan of the round (``memory_analysis()`` of the compiled round
at ``m`` and ``2 m`` clients, inputs as abstract shapes): the slope must be about the factors, head,
optimizer state and cached activations of one client, not the base weights.
Targets (issue 14): abo-jax at least 3x faster per round with the prefix cache, and not slower
without it, at 10 clients. torch and peft are optional (``pip install 'abo-jax[bench]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import abo_jax
from abo_jax.models import bert
from experiments.bench import common
from experiments.bench.workload import in_order_batches

NAME = "vs_peft"
TITLE = "MiniLM federated LoRA round: abo-jax vs PyTorch + peft"
TARGETS = ("query", "value")


class PeftMissingError(RuntimeError):
    """torch, transformers or peft is not installed (only this comparison needs them)."""


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PeftMissingError(
            f"the peft comparison needs {name} (optional): pip install 'abo-jax[bench,test]'"
        ) from e


@dataclass(frozen=True)
class Config:
    model: str = "minilm"  # "minilm" (the pretrained weights) or "tiny" (random 2-layer BERT)
    clients: int = 10
    samples: int = 16  # examples per client
    seq_len: int = 32
    batch: int = 8
    epochs: int = 1
    rank: int = 8
    lora_layers: int = 2  # the "last layers" setting
    classes: int = 4
    lr: float = 0.05
    reps: int = 5
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    if quick:
        return Config(model="tiny", clients=3, samples=8, seq_len=12, batch=4, lora_layers=1)
    return Config()


TINY = bert.BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)


def load(config: Config) -> tuple[bert.BertConfig, dict]:
    if config.model == "minilm":
        bert_config, params, _ = abo_jax.load_minilm()
        return bert_config, params
    if config.model == "tiny":
        return TINY, bert.random_bert_params(jax.random.key(config.seed), TINY)
    raise ValueError(f"model must be 'minilm' or 'tiny', got {config.model!r}")


def make_data(config: Config, vocab: int) -> abo_jax.ClientData:
    """Token ids ``[CLS] w ... w [SEP] 0 ...`` of random lengths, labels, ``m`` equal clients."""
    rng = np.random.default_rng(config.seed)
    n, length = config.clients * config.samples, config.seq_len
    low = 1000 if vocab > 2000 else 3  # MiniLM: skip [unused] and special ids
    ids = rng.integers(low, vocab, (n, length)).astype(np.int32)
    lengths = rng.integers(4, length + 1, n)
    ids[:, 0] = 101 if vocab > 2000 else 1
    ids[np.arange(n), lengths - 1] = 102 if vocab > 2000 else 2
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    labels = rng.integers(0, config.classes, n)
    part = abo_jax.iid(labels, num_clients=config.clients, key=jax.random.key(config.seed))
    return abo_jax.pad_clients(ids, labels, part)


def abo_round(
    config: Config,
    bert_config,
    params,
    *,
    lora_from_layer,
    precompute,
    in_order=False,
    map_clients=abo_jax.simulation.vmap_clients,
):
    """``(rnd, model)``: the jitted abo-jax round (``rnd.apply(state, data, inputs)``)."""
    model = bert.bert_lora_model(
        bert_config,
        params,
        config.classes,
        ranks=config.rank,
        targets=TARGETS,
        lora_from_layer=lora_from_layer,
        max_len=config.seq_len,
        dtype=jnp.float32,
    )
    update = abo_jax.client_update
    if in_order:
        update = functools.partial(abo_jax.client_update, batches_fn=in_order_batches)
    rnd = abo_jax.federated_round(
        model,
        abo_jax.product_sum(),
        optimizer=optax.sgd(config.lr),
        client_update=update,
        local_epochs=config.epochs,
        batch_size=config.batch,
        precompute=precompute,
        map_clients=map_clients,
    )
    return rnd, model


def global_model(state) -> dict:
    """The broadcast (one start for PS) as numpy: ``{(layer, target): (A, B)}`` and the head."""
    lora = {
        (name, t): (np.asarray(f.a), np.asarray(f.b))
        for name, per in state.clients.lora.items()
        for t, f in per.items()
    }
    head = state.clients.extra["head"]
    return {"lora": lora, "weight": np.asarray(head["weight"]), "bias": np.asarray(head["bias"])}


def peft_round(config: Config, bert_config, params, start: dict, data, *, layers, shuffle=True):
    """``(round_fn, global_state)``: the PyTorch + peft round, clients one after another.

    ``global_state`` is ``{"adapter": peft state dict, "head": head state dict}`` from abo-jax's
    start; ``round_fn(global_state) -> global_state``.
    """
    torch, transformers, peft = (_import(n) for n in ("torch", "transformers", "peft"))
    hf_config = transformers.BertConfig.from_dict(
        {**bert_config.to_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    )
    base = transformers.BertModel(hf_config, add_pooling_layer=False)
    state_dict = {k: torch.as_tensor(np.array(v)) for k, v in params.items()}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("pooler")}
    base.load_state_dict(state_dict, strict=False)
    lora_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.rank,  # scale alpha / r = 1, as abo-jax's
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        layers_to_transform=list(layers),
        layers_pattern="layer",
        bias="none",
    )
    model = peft.get_peft_model(base, lora_config).eval()  # eval: no dropout anywhere
    head = torch.nn.Linear(bert_config.hidden_size, config.classes)
    adapter = {}
    for (name, t), (a, b) in start["lora"].items():
        prefix = f"base_model.model.encoder.layer.{name[6:]}.attention.self.{t}"
        adapter[f"{prefix}.lora_A.weight"] = torch.as_tensor(np.array(a))
        adapter[f"{prefix}.lora_B.weight"] = torch.as_tensor(np.array(b))
    got = set(peft.get_peft_model_state_dict(model))
    if got != set(adapter):
        raise RuntimeError(f"peft adapter names differ: {sorted(got ^ set(adapter))[:4]}")
    state = {
        "adapter": adapter,
        "head": {k: torch.as_tensor(np.array(start[k])) for k in ("weight", "bias")},
    }
    xs = [torch.as_tensor(np.array(x), dtype=torch.long) for x in data.x]
    ys = [torch.as_tensor(np.array(y), dtype=torch.long) for y in data.y]
    weights = np.asarray(data.sizes, np.float64) / float(np.sum(data.sizes))
    generator = torch.Generator().manual_seed(config.seed)

    def forward(ids):
        mask = (ids != 0).long()
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return head((h * m).sum(1) / m.sum(1).clamp(min=1e-9))

    def round_fn(global_state):
        uploads = []
        for x, y in zip(xs, ys, strict=True):
            peft.set_peft_model_state_dict(model, global_state["adapter"])
            head.load_state_dict(global_state["head"])
            trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
            opt = torch.optim.SGD(trainable, lr=config.lr)
            for _ in range(config.epochs):
                n = x.shape[0]
                perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
                for j in range(n // config.batch):
                    idx = perm[j * config.batch : (j + 1) * config.batch]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(forward(x[idx]), y[idx]).backward()
                    opt.step()
            uploads.append(
                {
                    "adapter": {
                        k: v.detach().clone()
                        for k, v in peft.get_peft_model_state_dict(model).items()
                    },
                    "head": {k: v.detach().clone() for k, v in head.state_dict().items()},
                }
            )
        # Server: PS (every adapter tensor and the head averaged with the weights p_i).
        return {
            part: {
                k: sum(float(w) * u[part][k] for w, u in zip(weights, uploads, strict=True))
                for k in global_state[part]
            }
            for part in ("adapter", "head")
        }

    return round_fn, state


def peft_global(state) -> dict:
    lora = {}
    for key, value in state["adapter"].items():
        parts = key.split(".")
        layer, target = f"layer_{parts[4]}", parts[7]
        a, b = lora.get((layer, target), (None, None))
        v = value.numpy()
        lora[(layer, target)] = (v, b) if "lora_A" in key else (a, v)
    head = state["head"]
    return {"lora": lora, "weight": head["weight"].numpy(), "bias": head["bias"].numpy()}


def max_diff(ours: dict, theirs: dict) -> float:
    diffs = [np.max(np.abs(ours[k] - theirs[k])) for k in ("weight", "bias")]
    for key, (a, b) in ours["lora"].items():
        ta, tb = theirs["lora"][key]
        diffs += [np.max(np.abs(a - ta)), np.max(np.abs(b - tb))]
    return float(max(diffs))


def equality_check(config: Config, bert_config, params, data, lora_from_layer: int) -> dict:
    """One round of each without shuffling: ``max |abo-jax - peft|`` of the global model."""
    rnd, _ = abo_round(
        config, bert_config, params, lora_from_layer=lora_from_layer, precompute=True, in_order=True
    )
    rnd = abo_jax.jit_round(rnd)
    state = rnd.init(jax.random.key(config.seed), data)
    start = global_model(state)
    after, _ = rnd.apply(state, data, rnd.prepare(state, data))
    layers = range(lora_from_layer, bert_config.num_hidden_layers)
    round_fn, peft_start = peft_round(
        config, bert_config, params, start, data, layers=layers, shuffle=False
    )
    moved = max_diff(global_model(after), start)
    return {
        "max_abs_diff": max_diff(global_model(after), peft_global(round_fn(peft_start))),
        "moved": moved,
    }


def planned_memory(
    config: Config, bert_config, params, m: int, lora_from_layer: int, group: int | None
) -> dict:
    """XLA's buffer plan of one round at ``m`` clients (abstract inputs: nothing is allocated),
    every client at once (``group=None``) or in client groups of ``group``."""
    groups = abo_jax.simulation.vmap_clients if group is None else abo_jax.client_groups(group)
    rnd, _ = abo_round(
        dataclasses.replace(config, clients=m),
        bert_config,
        params,
        lora_from_layer=lora_from_layer,
        precompute=True,
        map_clients=groups,
    )
    sds = jax.ShapeDtypeStruct
    n, f32 = config.samples, np.dtype(np.float32)
    data = abo_jax.ClientData(
        x=sds((m, n, config.seq_len), np.int32),
        y=sds((m, n), np.int32),
        mask=sds((m, n), np.bool_),
        sizes=sds((m,), np.int32),
    )
    state = jax.eval_shape(
        rnd.init_state, jax.random.key(0), data, sds((m,), f32), {}, sds((m,), f32)
    )
    inputs = jax.eval_shape(rnd.prepare, state, data)
    ma = abo_jax.jit_round(rnd).apply.lower(state, data, inputs).compile().memory_analysis()
    peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
    return {
        "m": m,
        "peak_bytes": peak - ma.alias_size_in_bytes,
        "temp_bytes": ma.temp_size_in_bytes,
    }


def sizes_per_client(config: Config, bert_config, params, lora_from_layer: int) -> dict:
    """Bytes of what one client owns in the round, and of the shared base."""
    h, f = bert_config.hidden_size, np.dtype(np.float32).itemsize
    adapted = bert_config.num_hidden_layers - lora_from_layer
    factors = adapted * len(TARGETS) * config.rank * 2 * h * f
    head = (config.classes * h + config.classes) * f
    cache = config.samples * config.seq_len * (h * f + 1) if lora_from_layer else 0
    base = sum(v.size * f for k, v in params.items() if not k.startswith("pooler"))
    return {
        "factors_and_head_bytes": factors + head,
        "optimizer_state_bytes": 0,  # plain SGD, fresh every round
        "cached_activations_bytes": cache,
        "data_bytes": config.samples * (config.seq_len * 4 + 4 + 1),
        "base_weights_bytes": int(base),
    }


def _with_threads(torch, n: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run(config: Config, reps: int | None = None) -> dict:
    torch = _import("torch")
    _import("peft")
    bert_config, params = load(config)
    layers = bert_config.num_hidden_layers
    if not 1 <= config.lora_layers < layers:
        raise ValueError(f"lora_layers must be in [1, {layers}), got {config.lora_layers}")
    data = make_data(config, bert_config.vocab_size)
    settings = {"all layers": 0, "last layers": layers - config.lora_layers}
    print("  vs_peft: equality checks ...", file=sys.stderr, flush=True)
    check_cfg = dataclasses.replace(config, clients=min(config.clients, 3))
    check_data = make_data(check_cfg, bert_config.vocab_size)
    checks = {
        name: equality_check(check_cfg, bert_config, params, check_data, start)
        for name, start in settings.items()
    }
    thunks, compile_s, prepare_s = {}, {}, {}
    for name, start in settings.items():
        variants = (
            {"abo-jax": True} if start == 0 else {"abo-jax cached": True, "abo-jax uncached": False}
        )
        for variant, precompute in variants.items():
            rnd, _ = abo_round(
                config, bert_config, params, lora_from_layer=start, precompute=precompute
            )
            rnd = abo_jax.jit_round(rnd)
            state = rnd.init(jax.random.key(config.seed), data)
            t0 = time.perf_counter()
            inputs = rnd.prepare(state, data)
            jax.block_until_ready(inputs)
            prepare_s[f"{name}: {variant}"] = time.perf_counter() - t0
            compiled, seconds = common.compile_timed(rnd.apply, state, data, inputs)
            compile_s[f"{name}: {variant}"] = seconds
            thunks[f"{name}: {variant}"] = functools.partial(compiled, state, data, inputs)
            if variant != "abo-jax uncached":
                start_model = global_model(state)
        round_fn, peft_start = peft_round(
            config, bert_config, params, start_model, data, layers=range(start, layers)
        )
        thunks[f"{name}: peft"] = functools.partial(round_fn, peft_start)
        # On a loaded machine torch's intra-op threads can cost more than they give (vs_torch).
        thunks[f"{name}: peft 1 thread"] = functools.partial(
            _with_threads, torch, 1, round_fn, peft_start
        )
    print(
        f"  vs_peft: timing {len(thunks)} rounds x {reps or config.reps} ...",
        file=sys.stderr,
        flush=True,
    )
    t = common.time_interleaved(thunks, reps=reps or config.reps)
    rows = []
    for name in settings:
        peft_s = min(t[f"{name}: peft"].median_s, t[f"{name}: peft 1 thread"].median_s)
        for variant in [k.split(": ", 1)[1] for k in thunks if k.startswith(name + ":")]:
            key = f"{name}: {variant}"
            rows.append(
                {
                    "setting": name,
                    "variant": variant,
                    "round_s": t[key].median_s,
                    "min_s": t[key].min_s,
                    "peft_over_this": peft_s / t[key].median_s,
                    "prepare_s": prepare_s.get(key),
                    "compile_s": compile_s.get(key),
                    "times_s": t[key].times_s,
                }
            )
    print("  vs_peft: memory plans ...", file=sys.stderr, flush=True)
    memory = []
    for name, start in settings.items():
        for group in (None, 1):
            lo, hi = (
                planned_memory(config, bert_config, params, m, start, group)
                for m in (config.clients, 2 * config.clients)
            )
            memory.append(
                {
                    "setting": name,
                    "clients": "all at once (vmap)" if group is None else f"groups of {group}",
                    "bytes_per_client": (hi["peak_bytes"] - lo["peak_bytes"]) / (hi["m"] - lo["m"]),
                    "peak_bytes": {f"m={r['m']}": r["peak_bytes"] for r in (lo, hi)},
                    **sizes_per_client(config, bert_config, params, start),
                }
            )
    ratio = {r["setting"] + ": " + r["variant"]: r["peft_over_this"] for r in rows}
    targets = {
        "cached_ge_3x_peft": ratio["last layers: abo-jax cached"] >= 3,
        "uncached_not_slower": min(
            ratio["all layers: abo-jax"], ratio["last layers: abo-jax uncached"]
        )
        >= 1,
        "memory_per_client_below_base": all(
            r["bytes_per_client"] < r["base_weights_bytes"] for r in memory
        ),
    }
    return {
        "rows": rows,
        "memory": memory,
        "equality_checks": checks,
        "targets": targets,
        "torch_version": torch.__version__,
        "peft_version": _import("peft").__version__,
        "transformers_version": _import("transformers").__version__,
        "torch_threads": torch.get_num_threads(),
    }


COLUMNS = [
    ("setting", "setting", None),
    ("variant", "variant", None),
    ("round_s", "round [s] (median)", ".3g"),
    ("peft_over_this", "faster peft / this", ".2f"),
    ("prepare_s", "prepare, once [s]", ".3g"),
    ("compile_s", "compile [s]", ".3g"),
]
MEMORY_COLUMNS = [
    ("setting", "setting", None),
    ("clients", "clients trained", None),
    ("bytes_per_client", "planned B/client", ".4g"),
    ("factors_and_head_bytes", "factors+head B", None),
    ("cached_activations_bytes", "cached acts B", None),
    ("data_bytes", "data B", None),
    ("base_weights_bytes", "base weights B", None),
]


def table(result: dict) -> str:
    return (
        common.format_table(result["rows"], COLUMNS)
        + "\n\n"
        + common.format_table(result["memory"], MEMORY_COLUMNS)
    )


def notes(config: Config, result: dict) -> list[str]:
    checks = ", ".join(
        f"{k}: {v['max_abs_diff']:.1e} (moved {v['moved']:.1e})"
        for k, v in result["equality_checks"].items()
    )
    return [
        f"PyTorch {result['torch_version']} + peft {result['peft_version']} (transformers "
        f"{result['transformers_version']}), {result['torch_threads']} threads and 1, eager, clients"
        " one after another; ratios against the faster of the two",
        f"same round without shuffling, max |abo-jax - peft| of the global model: {checks}",
        "prepare: abo-jax's one-off cache of the frozen layers (per run, not per round); peft has "
        "no such cache",
    ]


def main(argv: list[str] | None = None) -> dict:
    return common.bench_main(argv, sys.modules[__name__], skip_on=(PeftMissingError,))


if __name__ == "__main__":
    main()
